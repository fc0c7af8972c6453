"""Segmentation Grad-CAM of a sliding-window prediction: the map explains the mask that was written.

A model that predicts with overlapping windows (MONAI ``sliding_window_inference``, Gaussian blending) never
sees the whole input at once; its instance normalisation sees one window's statistics. A Grad-CAM of one
whole-input forward therefore explains another computation than the one whose labels went into the SEG.
Here the explanation runs through the same windows, with the same overlap and blending, by calling
MONAI's ``sliding_window_inference`` itself with a predictor that returns, for each window, the Grad-CAM of

    score(window) = sum over tumour classes c of the logit of c, summed over the window's voxels that the
                    given mask (the written labels, on the network's grid) labels c

(pytorch-grad-cam's ``SemanticSegmentationTarget``, for several classes and in 3-D). The mask travels
with the image as an extra input channel, so MONAI crops it with the window; the predictor splits it off
before the network sees the image. The windows' maps are raw (not each stretched to [0, 1]: cam.py,
``normalise=False``), so a window holding most of the lesion weighs more than one touching its edge, and a
window without lesion contributes zero. The blended map is upsampled (trilinear) to the output shape,
restricted to the body and rescaled to a peak of 1 inside it (body.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from neuronova.xai.body import restrict_to_body
from neuronova.xai.budget import checkpoint, model_lock, run_with_budget
from neuronova.xai.cam import OnePassGradCAM, layer_name
from neuronova.xai.segmentation import (
    GIVEN_MASK,
    WHOLE_VOLUME,
    SegmentationExplanation,
    body_for,
    check_body,
)

log = logging.getLogger(__name__)


class _WindowTarget:
    """The summed logits of the target classes over one window's crop of the mask (all voxels when the
    whole mask is empty). A window without target voxels scores 0 with a zero gradient: no map."""

    def __init__(self, labels: torch.Tensor, classes: tuple[int, ...], whole: bool) -> None:
        self.labels = labels
        self.classes = classes
        self.whole = whole

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if max(self.classes) >= output.shape[0]:
            raise ValueError(f"target classes {self.classes} do not fit a network with {output.shape[0]} channels")
        score = (output * 0).sum()  # keeps the graph when no voxel is selected
        for c in self.classes:
            selected = torch.ones_like(self.labels, dtype=torch.bool) if self.whole else self.labels == c
            score = score + (output[c] * selected).sum()
        return score


def explain_segmentation_windows(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    input_tensor: torch.Tensor,
    mask: np.ndarray,
    *,
    roi_size: Sequence[int],
    overlap: float,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    target_classes: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    body: np.ndarray | bool = True,
    time_budget_s: float | None = None,
) -> SegmentationExplanation:
    """Grad-CAM of the region ``mask`` labels, through the windows that predicted it.

    ``input_tensor`` is the network's whole input (1, C, D, H, W); ``mask`` the label map on the same grid
    (D, H, W) (the written labels mapped to the grid); ``roi_size``, ``overlap``, ``sw_batch_size`` and
    ``mode`` are the inference's. ``target_classes`` default to every label value in the mask above 0;
    ``output_shape`` and ``body`` as for :func:`~neuronova.xai.segmentation.explain_segmentation`.
    Raises XAIGenerationError when the budget runs out or anything fails.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
    if input_tensor.ndim != 5 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected a (1, C, D, H, W) tensor, got {tuple(input_tensor.shape)}")
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    grid = tuple(int(n) for n in input_tensor.shape[2:])
    if mask.shape != grid:
        raise ValueError(f"mask shape {mask.shape} differs from the input grid {grid}")
    roi = tuple(int(n) for n in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be three positive sizes, got {roi_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    present = tuple(int(v) for v in np.unique(mask) if v > 0)
    classes = tuple(int(c) for c in target_classes) if target_classes is not None else present
    whole = not any(np.any(mask == c) for c in classes)
    if not classes:
        raise ValueError("the mask labels no voxel and no target class was given")
    spatial = tuple(int(n) for n in (output_shape if output_shape is not None else grid))
    if len(spatial) != 3 or min(spatial) < 1:
        raise ValueError(f"output_shape {output_shape} is not a 3-D shape")
    check_body(body, spatial)
    name = layer_name(model, target_layer)

    def explain() -> SegmentationExplanation:
        started = time.perf_counter()
        labels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(input_tensor.device)
        stacked = torch.cat([input_tensor.detach().float(), labels[None, None]], dim=1)
        native: list[tuple[int, ...]] = []
        windows = 0

        with model_lock(model), OnePassGradCAM(model, target_layer, native_resolution=True, normalise=False) as cam:

            def predictor(window: torch.Tensor) -> torch.Tensor:
                nonlocal windows
                checkpoint()
                images, crops = window[:, :-1], window[:, -1].round().long()
                targets = [_WindowTarget(crops[i], classes, whole) for i in range(len(window))]
                maps, _ = cam.run(images, targets)
                native.append(tuple(maps.shape[1:]))
                windows += len(window)
                coarse = torch.from_numpy(maps)[:, None].to(window.device)
                return F.interpolate(coarse, size=tuple(window.shape[2:]), mode="trilinear", align_corners=False)

            blended = sliding_window_inference(stacked, roi, sw_batch_size, predictor, overlap=overlap, mode=mode)
        checkpoint()
        heat = torch.as_tensor(blended).float()
        if tuple(heat.shape[2:]) != spatial:
            heat = F.interpolate(heat, size=spatial, mode="trilinear", align_corners=False)
        cam_map = restrict_to_body(heat[0, 0].cpu().numpy(), body_for(body, input_tensor, spatial))
        result = SegmentationExplanation(
            cam=cam_map,
            labels=np.asarray(mask, dtype=np.uint8),
            target_classes=classes,
            target_region=WHOLE_VOLUME if whole else GIVEN_MASK,
            region_voxels=0 if whole else int(np.isin(mask, classes).sum()),
            native_shape=native[0] if native else (),
            layer=name,
        )
        log.debug("windowed segmentation Grad-CAM on %s: %d windows in %.3f s", name, windows,
                  time.perf_counter() - started)
        return result

    return run_with_budget(explain, time_budget_s, what="segmentation Grad-CAM")
