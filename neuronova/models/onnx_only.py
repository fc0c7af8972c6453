"""ONNX-only models: ``model.onnx`` and a node-layout ``metadata.json``, without torch weights.

Models published only as ONNX graphs (exported from any framework) run in ONNX Runtime behind the same
:class:`~neuronova.models.volumetric.VolumeSegmenter` contract as the node's own study model and MONAI bundles.
The model card uses the study model's keys (see :mod:`neuronova.models.multiseq`): ``input.roles``,
``optional_roles``, ``axcodes``, ``pixdim``, ``normalisation``, ``roi_size``, ``overlap``; ``output.activation``,
``threshold``; ``labels`` (sigmoid channel or softmax label value -> region name). With no gradients there is
no Grad-CAM: ``gradcam_module()`` returns None and the description says "Grad-CAM unavailable (ONNX-only)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronova.models.base import ONNX_FILE, WEIGHTS_FILE
from neuronova.models.bundle.segmenter import OnnxRunner, VolumeModel, WindowSteps
from neuronova.models.metadata import ModelMetadata
from neuronova.models.volumetric import OutputRegion, Postprocessing, Preprocessing

LAYOUT = "onnx_only"
NORMALISATIONS = ("zscore_nonzero", "zscore_foreground", "none")
_BACKGROUND = {"background", "bg"}


def is_onnx_only(path: Path, metadata: ModelMetadata) -> bool:
    """A node-layout card listing ``model.onnx`` and no torch weights (no weights.npz, no architecture)."""
    return (ONNX_FILE in metadata.files and WEIGHTS_FILE not in metadata.files and metadata.architecture is None
            and not (path / WEIGHTS_FILE).exists())


def _triple(value: Any, key: str, cast: type) -> tuple[Any, Any, Any] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 3 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"metadata.json input.{key} must be three positive numbers, found {value!r}")
    return tuple(cast(v) for v in value)  # type: ignore[return-value]


def load_onnx_only(path: Path, metadata: ModelMetadata, *, device: str = "auto") -> VolumeModel:
    """Build the model from a verified directory (files already checked against their SHA-256)."""
    if metadata.task != "segmentation":
        raise ValueError(f"ONNX-only models are run for study-level segmentation; this card's task is {metadata.task!r}")
    spec, out = metadata.input, metadata.output
    roles = spec.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r for r in roles):
        raise ValueError("an ONNX-only model's metadata.json needs input.roles: the series roles in channel order")
    optional = frozenset(spec.get("optional_roles", ()))
    if not optional <= set(roles):
        raise ValueError(f"input.optional_roles {sorted(optional)} must be some of the roles {roles}")
    normalisation = spec.get("normalisation", "zscore_nonzero")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"input.normalisation must be one of {NORMALISATIONS}, found {normalisation!r}")
    activation = out.get("activation", "softmax")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"output.activation must be softmax or sigmoid, found {activation!r}")
    names = dict(metadata.labels) if isinstance(metadata.labels, dict) else dict(enumerate(metadata.labels))
    regions = tuple(OutputRegion(int(k), str(v)) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))
                    if not (activation == "softmax" and (int(k) == 0 or str(v).lower() in _BACKGROUND)))
    runner = OnnxRunner(path / ONNX_FILE, device)
    roi = _triple(spec.get("roi_size"), "roi_size", int)
    notes = []
    if roi is None and all(runner.fixed[2:]):
        roi = tuple(runner.fixed[2:])  # type: ignore[assignment]
        notes.append(f"windows of the graph's fixed size {roi}")
    if runner.fixed[1] is not None and runner.fixed[1] != len(roles):
        raise ValueError(f"{ONNX_FILE} takes {runner.fixed[1]} channels; input.roles names {len(roles)}")
    n_out = out.get("num_channels")
    steps = WindowSteps(roi_size=roi, overlap=float(spec.get("overlap", 0.25)), sw_batch_size=1,
                        blend_mode=str(spec.get("blend_mode", "gaussian")))
    return VolumeModel(
        path, metadata, device=device, layout=LAYOUT, roles=tuple(roles), optional_roles=optional,
        preprocessing=Preprocessing(axcodes=str(spec.get("axcodes", "RAS")),
                                    pixdim=_triple(spec.get("pixdim", [1.0, 1.0, 1.0]), "pixdim", float),
                                    normalisation=normalisation),
        postprocessing=Postprocessing(activation=activation, threshold=float(out.get("threshold", 0.5)), regions=regions),
        runner=runner, steps=steps, n_outputs=int(n_out) if isinstance(n_out, int) else None, notes=tuple(notes))
