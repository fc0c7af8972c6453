"""One-pass Grad-CAM on top of pytorch-grad-cam.

pytorch-grad-cam's ``GradCAM`` runs one forward (keeping the outputs in ``cam.outputs``) and one backward
from the target score. Used naively next to a separate prediction forward it cost 3.6x (FACTS) to 4.2x
(here) a plain forward on ResNet18, because (1) the prediction needs its own forward, and (2) its
``loss.backward()`` goes through the whole network, computing gradients for every weight and for every
layer below the target layer that Grad-CAM never reads. This wrapper keeps the library's forward, targets,
weighting and normalisation, and changes only what costs time or breaks sharing:

* The prediction comes from ``cam.outputs`` of the same forward, and a target that picks the predicted
  class decides inside that forward, so one forward plus one backward gives both.
* A forward hook, registered before the library's own, cuts the graph at the target layer: the forward
  runs under ``torch.no_grad()`` up to the target layer, whose output is replaced by a detached copy that
  requires grad, and grad mode is switched on from there. The backward then stops at the target layer
  (the gradient with respect to its output is the same as without the cut) and nothing below it is
  recorded. On ResNet18 layer4 this brings Grad-CAM to about 1.1x a plain forward (bench/xai.py).
* The library's activation and gradient hooks are module hooks, so they would fire for another thread's
  plain inference through the same module. Here they record only the forwards of the thread that built
  the explainer; explanations of one model are serialised by the model lock (budget.model_lock).
* For 3-D maps the library upsamples with a cubic spline (``scipy.ndimage.zoom``: 0.4 s from 16-cubed
  to 128-cubed here, and it overshoots [0, 1]); ``native_resolution=True`` returns the map at the target
  layer's size so that the caller can upsample with trilinear interpolation.
* The library min-max normalises every map on its own. ``normalise=False`` returns the raw
  ``ReLU(sum_k w_k A_k)`` instead, in the score's units: maps of several sliding windows explain parts of one
  score and can be blended only if none was stretched to [0, 1] by itself (xai/sliding.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

from neuronova.xai.budget import checkpoint


class _ThreadBoundActivations(ActivationsAndGradients):
    """The library's activation/gradient recorder, deaf to forwards of other threads."""

    def __init__(self, model: torch.nn.Module, target_layers: list[torch.nn.Module]) -> None:
        self._owner = threading.get_ident()
        super().__init__(model, target_layers, None, True)

    def save_activation(self, module: torch.nn.Module, input: Any, output: Any) -> None:
        if threading.get_ident() == self._owner:
            super().save_activation(module, input, output)

    def save_gradient(self, module: torch.nn.Module, input: Any, output: Any) -> None:
        if threading.get_ident() == self._owner:
            super().save_gradient(module, input, output)


class OnePassGradCAM(GradCAM):
    """GradCAM for one target layer, cut at that layer, bound to the creating thread. See the module doc.

    Use :meth:`run` (not ``__call__``) and :meth:`close` in a ``finally`` (or ``with``); the library's own
    ``__exit__`` swallows IndexError, this class's does not.
    """

    def __init__(self, model: torch.nn.Module, target_layer: torch.nn.Module, *, native_resolution: bool = False,
                 normalise: bool = True) -> None:
        if not isinstance(model, torch.nn.Module) or not isinstance(target_layer, torch.nn.Module):
            raise TypeError(
                f"model and target_layer must be torch.nn.Module, got {type(model).__name__} and {type(target_layer).__name__}"
            )
        if not any(m is target_layer for m in model.modules()):
            raise ValueError(f"target layer {type(target_layer).__name__} is not a submodule of the model")
        self._owner = threading.get_ident()
        self._fired = False
        self.native_resolution = native_resolution
        self.normalise = normalise
        # Registered first, so the library's hooks (registered next) see the cut tensor.
        self._cut_handle = target_layer.register_forward_hook(self._cut_graph)
        try:
            super().__init__(model, [target_layer])
            self.activations_and_grads.release()
            self.activations_and_grads = _ThreadBoundActivations(model, [target_layer])
        except BaseException:
            self._cut_handle.remove()
            raise

    def _cut_graph(self, module: torch.nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
        if threading.get_ident() != self._owner:
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the target layer must output a tensor, got {type(output).__name__}")
        checkpoint()
        self._fired = True
        torch.set_grad_enabled(True)  # undone by run()'s no_grad block when the call returns
        # clone: a leaf that requires grad may not be modified in place (an in-place ReLU after the layer).
        return output.detach().requires_grad_(True).clone()

    def get_target_width_height(self, input_tensor: torch.Tensor) -> Any:
        # None makes the library's scale_cam_image normalise without resizing.
        return None if self.native_resolution else super().get_target_width_height(input_tensor)

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list[Any], eigen_smooth: bool) -> Any:
        if self.normalise:
            return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)
        # The library's computation without its scale_cam_image (one target layer, detached tensors).
        (activations,) = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
        (gradients,) = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
        cam = self.get_cam_image(input_tensor, self.target_layers[0], targets, activations, gradients, eigen_smooth)
        return [np.maximum(cam, 0)[:, None]]

    def aggregate_multi_layers(self, cam_per_target_layer: Any) -> np.ndarray:
        if self.normalise:
            return super().aggregate_multi_layers(cam_per_target_layer)
        return np.asarray(cam_per_target_layer[0][:, 0], dtype=np.float32)

    def run(self, input_tensor: torch.Tensor, targets: Sequence[Any]) -> tuple[np.ndarray, torch.Tensor]:
        """One forward and one backward: (CAMs (N, *spatial) float32, in [0, 1] unless ``normalise=False``,
        model outputs, detached)."""
        self._fired = False
        with torch.inference_mode(False), torch.no_grad():
            cams = self(input_tensor, list(targets))
        if not self._fired:
            raise RuntimeError("the target layer did not run in the model's forward pass")
        outputs = self.outputs.detach()
        del self.outputs  # frees the retained graph
        return np.asarray(cams, dtype=np.float32), outputs

    def close(self) -> None:
        self._cut_handle.remove()
        self.activations_and_grads.release()
        # The backward filled .grad of the layers above the target layer; nobody reads them.
        self.model.zero_grad(set_to_none=True)

    def __enter__(self) -> OnePassGradCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_cut_handle", None)
        if handle is not None:
            handle.remove()
        if hasattr(self, "activations_and_grads"):
            super().__del__()


def layer_name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` ("" for the model itself)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"{type(layer).__name__} is not a submodule of the model")
