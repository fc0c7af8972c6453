"""Grad-CAM for a segmentation network (3-D or 2-D): which features drove the predicted tumour region.

The score explained is the summed logit of the tumour class(es) over the voxels predicted (or given) as
those classes, pytorch-grad-cam's ``SemanticSegmentationTarget`` idea extended to several classes and to
3-D. pytorch-grad-cam 1.5.7 handles 5-D activations in ``GradCAM``, so it is used here as for the
classifier (one forward, one backward, graph cut at the target layer: see cam.py); the map is taken at the
layer's own resolution and upsampled with trilinear (bilinear in 2-D) interpolation, which stays within
[0, 1] and is about 10x faster than the library's cubic spline at 128-cubed. monai.visualize.GradCAM
would do as well (bench/xai.py times both); one library for 2-D and 3-D keeps one code path.

A map from the bottleneck is coarse (16-cubed for a 128-cubed input to a 3-level UNet); a decoder layer
gives a finer map at a higher cost.

The map is restricted to the body (body.py), found in the network's input or given by the caller, and
rescaled so that its peak inside the body is 1. :func:`explain_segmentation` explains one forward over
the whole input; a model that predicts with sliding windows is explained window by window, blended like
its prediction, by :func:`neuronova.xai.sliding.explain_segmentation_windows`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from neuronova.xai.body import body_mask, resize_mask, restrict_to_body
from neuronova.xai.budget import checkpoint, model_lock, run_with_budget
from neuronova.xai.cam import OnePassGradCAM, layer_name

log = logging.getLogger(__name__)

PREDICTED_MASK = "predicted mask"
GIVEN_MASK = "given mask"
WHOLE_VOLUME = "whole volume"


@dataclass(frozen=True)
class SegmentationExplanation:
    cam: np.ndarray  #: (D, H, W) or (H, W) float32 in [0, 1] at the input's (or the requested) resolution
    labels: np.ndarray  #: uint8 label map predicted by the same forward (argmax, or logit > 0 for one channel)
    target_classes: tuple[int, ...]  #: label values whose logits were explained
    target_region: str  #: PREDICTED_MASK, GIVEN_MASK, or WHOLE_VOLUME when no voxel had a target label
    region_voxels: int  #: voxels in the explained region
    native_shape: tuple[int, ...]  #: shape of the map at the target layer, before upsampling
    layer: str
    method: str = "Grad-CAM"


class _RegionTarget:
    """Sum of each target class's logit over the voxels labelled with that class.

    Labels are the argmax over channels (label value = channel index), or for a one-channel network
    ``logit > 0`` (label 1 = channel 0). With no voxel of a target class the whole volume is used, which
    explains where the network came closest to finding tumour.
    """

    def __init__(self, classes: Sequence[int] | None, mask: np.ndarray | None) -> None:
        self.classes = None if classes is None else tuple(int(c) for c in classes)
        self.mask = mask
        self.labels: np.ndarray | None = None
        self.region = PREDICTED_MASK if mask is None else GIVEN_MASK
        self.region_voxels = 0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        n_channels = output.shape[0]
        single = n_channels == 1
        with torch.no_grad():
            predicted = (output[0] > 0).to(torch.uint8) if single else output.argmax(0).to(torch.uint8)
        self.labels = predicted.cpu().numpy()
        classes = self.classes or ((1,) if single else tuple(range(1, n_channels)))
        valid = classes == (1,) if single else all(0 <= c < n_channels for c in classes)
        if not valid or not classes:
            raise ValueError(f"target classes {classes} do not fit a network with {n_channels} output channel(s)")
        self.classes = classes
        if self.mask is None:
            labels = predicted
        else:
            if self.mask.shape != tuple(output.shape[1:]):
                raise ValueError(f"mask shape {self.mask.shape} differs from the output's {tuple(output.shape[1:])}")
            labels = torch.from_numpy(np.ascontiguousarray(self.mask).astype(np.uint8)).to(output.device)
        region = torch.zeros_like(labels, dtype=torch.bool)
        for c in classes:
            region |= labels == c
        self.region_voxels = int(region.sum())
        if self.region_voxels == 0:
            self.region = WHOLE_VOLUME
        score = output.new_zeros(())
        for c in classes:
            channel = output[0] if single else output[c]
            selected = (labels == c) if self.region_voxels else torch.ones_like(labels, dtype=torch.bool)
            score = score + (channel * selected).sum()
        return score


def explain_segmentation(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    target_classes: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    output_shape: Sequence[int] | None = None,
    time_budget_s: float | None = None,
    body: np.ndarray | bool = True,
) -> SegmentationExplanation:
    """Segment one (1, C, D, H, W) or (1, C, H, W) input and explain the tumour region with Grad-CAM.

    ``target_classes``: label values to explain (default every foreground class 1..K-1). ``mask``: a label
    map of the output's spatial shape to explain instead of the prediction (e.g. a corrected mask).
    ``output_shape``: the CAM's shape (default the input's spatial shape), e.g. the original volume's when
    the network saw a resampled one. ``body``: True restricts the map to the body found in the input,
    a boolean array of the output shape gives the body (e.g. found in the source volume), False keeps the
    whole field of view. Raises XAIGenerationError when the budget runs out or anything fails.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
    if input_tensor.ndim not in (4, 5) or input_tensor.shape[0] != 1:
        raise ValueError(f"expected a (1, C, D, H, W) or (1, C, H, W) tensor, got {tuple(input_tensor.shape)}")
    name = layer_name(model, target_layer)
    spatial = tuple(int(n) for n in (output_shape if output_shape is not None else input_tensor.shape[2:]))
    if len(spatial) != input_tensor.ndim - 2 or min(spatial) < 1:
        raise ValueError(f"output_shape {output_shape} does not fit a {input_tensor.ndim - 2}-D input")
    check_body(body, spatial)

    def explain() -> SegmentationExplanation:
        started = time.perf_counter()
        target = _RegionTarget(target_classes, mask)
        with model_lock(model), OnePassGradCAM(model, target_layer, native_resolution=True) as cam:
            coarse, _ = cam.run(input_tensor, [target])
        checkpoint()
        native = coarse[0]
        mode = "trilinear" if native.ndim == 3 else "bilinear"
        upsampled = F.interpolate(torch.from_numpy(native)[None, None], size=spatial, mode=mode, align_corners=False)
        heat = upsampled[0, 0].numpy()
        checkpoint()
        # interpolation between cell centres lowers the peak below 1: rescaled here, inside the body
        heat = restrict_to_body(heat, body_for(body, input_tensor, spatial))
        result = SegmentationExplanation(
            cam=heat,
            labels=target.labels,  # type: ignore[arg-type]  # set in the forward
            target_classes=target.classes,  # type: ignore[arg-type]
            target_region=target.region,
            region_voxels=target.region_voxels,
            native_shape=tuple(native.shape),
            layer=name,
        )
        log.debug("segmentation Grad-CAM on %s: %s map in %.3f s", name, native.shape, time.perf_counter() - started)
        return result

    return run_with_budget(explain, time_budget_s, what="segmentation Grad-CAM")


def check_body(body: np.ndarray | bool, spatial: tuple[int, ...]) -> None:
    if isinstance(body, bool):
        return
    if not isinstance(body, np.ndarray):
        raise TypeError(f"body must be a bool or a numpy array, got {type(body).__name__}")
    if body.shape != spatial:
        raise ValueError(f"body mask shape {body.shape} differs from the map's {spatial}")


def body_for(body: np.ndarray | bool, input_tensor: torch.Tensor, spatial: tuple[int, ...]) -> np.ndarray:
    """The body mask of the map's shape: given, found in the input (channels' mean), or everything."""
    if isinstance(body, np.ndarray):
        return body.astype(bool, copy=False)
    if not body:
        return np.ones(spatial, dtype=bool)
    image = input_tensor.detach()[0].float().mean(dim=0).cpu().numpy()
    return resize_mask(body_mask(image), spatial)


def key_slices(volume: np.ndarray, n: int = 3, *, axis: int = 0, min_separation: int = 3) -> list[int]:
    """Indices of the ``n`` slices along ``axis`` with the most tumour (a label map: voxels not 0) or the
    most activation (a float CAM: summed heat), best first.

    A slice closer than ``min_separation`` to one already chosen is skipped, so the key images show
    different levels rather than three neighbours; 1 allows neighbours. Slices scoring 0 are never chosen.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
    if n < 1 or min_separation < 1:
        raise ValueError(f"n and min_separation must be at least 1, got {n} and {min_separation}")
    values = volume != 0 if not np.issubdtype(volume.dtype, np.floating) else np.nan_to_num(volume)
    other = tuple(a for a in range(3) if a != axis % 3)
    scores = values.sum(axis=other, dtype=np.float64)
    chosen: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        if scores[index] <= 0 or len(chosen) == n:
            break
        if all(abs(int(index) - c) >= min_separation for c in chosen):
            chosen.append(int(index))
    return chosen


def unet_bottleneck(net: torch.nn.Module) -> torch.nn.Module:
    """The bottom layer of a ``monai.networks.nets.UNet`` (innermost ``SkipConnection``'s submodule)."""
    from monai.networks.layers.simplelayers import SkipConnection

    node: torch.nn.Module = getattr(net, "model", net)
    while True:
        skips = [child for child in node.children() if isinstance(child, SkipConnection)]
        if not skips:
            break
        node = skips[0].submodule
    if node is getattr(net, "model", net):
        raise ValueError(f"{type(net).__name__} has no SkipConnection: not a MONAI UNet")
    return node


def unet_first_decoder(net: torch.nn.Module) -> torch.nn.Module:
    """The up-sampling block right after the bottom of a ``monai.networks.nets.UNet``.

    Its map has twice the bottleneck's resolution in each axis, and on the shipped MR model it follows the
    lesion much more closely: with the written mask as the target, 84 % of the voxels at heat >= 0.5 lay
    in the lesion against 40 % for the bottleneck (synthetic phantom 900003, sliding windows; the
    bottleneck's map spreads over the hemisphere).
    """
    bottom = unet_bottleneck(net)
    for module in net.modules():
        children = list(module.children())
        for i, child in enumerate(children[:-1]):
            if isinstance(child, torch.nn.Module) and any(m is bottom for m in child.children()):
                return children[i + 1]
    raise ValueError(f"{type(net).__name__} has no block after its bottleneck: not a MONAI UNet")
