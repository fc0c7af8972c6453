"""Grad-CAM for an image classifier: the prediction and its heatmap from one forward and one backward.

The functions take any ``torch.nn.Module`` that maps a preprocessed (N, C, H, W) tensor to (N, K) logits,
and the layer to explain (usually the last convolutional block: ``model.layer4`` for a ResNet).

The heatmap is restricted to the body seen in the input itself (body.py: no weight on the air around the
head, the pad of a pad-to-square) and rescaled so that its hottest pixel inside the body is 1: the hottest
region is the one that drove the explained class, whatever the network made of the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuronova.xai.body import body_mask, restrict_to_body
from neuronova.xai.budget import checkpoint, model_lock, run_with_budget
from neuronova.xai.cam import OnePassGradCAM, layer_name

log = logging.getLogger(__name__)

METHOD = "Grad-CAM"


@dataclass(frozen=True)
class ClassificationExplanation:
    """A prediction and the Grad-CAM of one class, both from the same forward pass."""

    logits: np.ndarray  #: (K,) float32, the model's raw outputs
    probabilities: np.ndarray  #: (K,) float32, softmax of ``logits``
    predicted_class: int  #: argmax of ``logits``
    target_class: int  #: the class the heatmap explains (the predicted one unless another was asked for)
    heatmap: np.ndarray  #: (H, W) float32 in [0, 1] at the input's resolution; all zero if no evidence
    layer: str  #: dotted name of the explained layer in the model
    #: where the heatmap may be non-zero: the body found in the input (all True when not restricted)
    body: np.ndarray | None = None
    method: str = METHOD

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted_class])


class _ClassTarget:
    """The logit of a class, or of the predicted class, chosen inside the shared forward pass."""

    def __init__(self, category: int | None) -> None:
        self.category = category
        self.chosen: int | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 1:
            raise ValueError(f"a classifier must output (N, K) logits, got one item of shape {tuple(output.shape)}")
        n_classes = output.shape[0]
        if self.category is None:
            self.chosen = int(output.argmax())
        elif 0 <= self.category < n_classes:
            self.chosen = self.category
        else:
            raise ValueError(f"target class {self.category} is out of range for a model with {n_classes} classes")
        return output[self.chosen]


def explain_classification(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    target_class: int | None = None,
    time_budget_s: float | None = None,
    restrict_body: bool = True,
) -> ClassificationExplanation:
    """Predict one image and explain ``target_class`` (default: the predicted class) with Grad-CAM.

    ``input_tensor`` is the preprocessed (1, C, H, W) batch the model expects. Raises XAIGenerationError
    when the budget runs out or anything fails; TypeError/ValueError for a malformed input.
    ``restrict_body=False`` keeps the library's map over the whole input (for comparison and tests).
    """
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) tensor, got shape {tuple(input_tensor.shape)}")
    return explain_classification_batch(
        model, target_layer, input_tensor, target_classes=[target_class], time_budget_s=time_budget_s,
        restrict_body=restrict_body,
    )[0]


def explain_classification_batch(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    target_classes: Sequence[int | None] | None = None,
    time_budget_s: float | None = None,
    restrict_body: bool = True,
) -> list[ClassificationExplanation]:
    """Predict and explain a (N, C, H, W) batch in one forward and one backward.

    ``target_classes`` gives each item its own class to explain (``None``: that item's predicted class);
    omitted, every item explains its prediction.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
    if input_tensor.ndim != 4 or input_tensor.shape[0] < 1:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(input_tensor.shape)}")
    n = input_tensor.shape[0]
    wanted = [None] * n if target_classes is None else list(target_classes)
    if len(wanted) != n:
        raise ValueError(f"{len(wanted)} target classes for a batch of {n}")
    name = layer_name(model, target_layer)

    def explain() -> list[ClassificationExplanation]:
        started = time.perf_counter()
        targets = [_ClassTarget(c) for c in wanted]
        with model_lock(model), OnePassGradCAM(model, target_layer) as cam:
            heatmaps, outputs = cam.run(input_tensor, targets)
        logits = outputs.float().cpu()
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"a classifier must output (N, K>=2) logits, got {tuple(logits.shape)}")
        probabilities = torch.softmax(logits, dim=1).numpy()
        checkpoint()
        images = input_tensor.detach().float().mean(dim=1).cpu().numpy()  # the channels' mean: one grey image
        bodies = [body_mask(images[i]) if restrict_body else np.ones(images[i].shape, bool) for i in range(n)]
        result = [
            ClassificationExplanation(
                logits=logits[i].numpy().copy(),
                probabilities=probabilities[i].copy(),
                predicted_class=int(logits[i].argmax()),
                target_class=int(targets[i].chosen),  # type: ignore[arg-type]  # set by the backward
                heatmap=restrict_to_body(heatmaps[i], bodies[i]) if restrict_body else heatmaps[i].copy(),
                layer=name,
                body=bodies[i],
            )
            for i in range(n)
        ]
        log.debug("Grad-CAM of %d image(s) on %s in %.3f s", n, name, time.perf_counter() - started)
        return result

    return run_with_budget(explain, time_budget_s, what="Grad-CAM explanation")
