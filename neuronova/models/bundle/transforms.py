"""A bundle's transforms and inferer mapped onto the node's steps.

The node does not run a bundle's transform chain: it loads DICOM series, not NIfTI files, and its study
pipeline does orientation, resampling and their inverse in the reference series' geometry. Each transform
the config names is therefore mapped onto what the :mod:`neuronova.models.volumetric` contract can say, or
refuses the bundle with its name:

=========================================================  =================================================
``LoadImaged``, ``EnsureChannelFirstd``, ``EnsureTyped``,    done by the node's own loading (nothing to map)
``ToTensord``, ``CastToTyped`` (float32), ``ToDeviced``
``Orientationd(axcodes)``                                    ``Preprocessing.axcodes`` (pipeline)
``Spacingd(pixdim)``                                         ``Preprocessing.pixdim`` (pipeline)
``NormalizeIntensityd(nonzero, channel_wise)`` first         ``Preprocessing.normalisation="zscore_nonzero"``
``NormalizeIntensityd`` (other arguments),                   run by the model (MONAI's array transform) on
``ScaleIntensityd``, ``ScaleIntensityRanged``,               the whole volume before the sliding windows
``ScaleIntensityRangePercentilesd``
``DivisiblePadd(k)``, ``SpatialPadd``                        run by the model, padding cropped off again
``Activationsd(sigmoid|softmax)``                            ``Postprocessing.activation`` (model)
``AsDiscreted(threshold|argmax)``                            ``Postprocessing.threshold`` / softmax (pipeline)
``Invertd``                                                  the pipeline's inverse to the reference grid
``SaveImaged``; ``Lambdad`` after discretisation             output writing: the node writes its own SEG with
                                                             one segment per region (the lambda is never run)
``SlidingWindowInferer(roi_size, overlap, sw_batch_size,     ``roi_size``, ``overlap``, windows and blending
mode)``, ``SimpleInferer``                                   in :meth:`infer`
=========================================================  =================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai import transforms as mt

from neuronova.models.bundle.config import BundleConfig, BundleRefused, is_disabled, target_name
from neuronova.models.volumetric import Normalisation

TRANSFORM_PREFIXES = ("monai.transforms",)
INFERER_PREFIXES = ("monai.inferers",)
_PASS_THROUGH = {"LoadImaged", "EnsureChannelFirstd", "AddChanneld", "EnsureTyped", "ToTensord", "ToDeviced",
                 "CastToTyped", "EnsureType", "ToNumpyd"}
_INTENSITY: dict[str, Callable[..., Any]] = {
    "NormalizeIntensityd": mt.NormalizeIntensity,
    "ScaleIntensityd": mt.ScaleIntensity,
    "ScaleIntensityRanged": mt.ScaleIntensityRange,
    "ScaleIntensityRangePercentilesd": mt.ScaleIntensityRangePercentiles,
}
_POST_OUTPUT = {"SaveImaged", "EnsureTyped", "ToTensord", "CopyItemsd", "ToNumpyd", "SqueezeDimd", "CastToTyped"}
#: Dictionary-transform arguments that only say which item to touch.
_KEY_ARGS = frozenset({"keys", "allow_missing_keys", "meta_keys", "meta_key_postfix", "dtype"})


@dataclass
class Steps:
    """What a bundle's config asks for, in the node's terms."""

    axcodes: str | None = None
    pixdim: tuple[float, float, float] | None = None
    normalisation: Normalisation = "none"
    #: MONAI array transforms the model applies to the whole volume before windowing, with their names.
    model_intensity: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list)
    pad_k: int | None = None
    pad_size: tuple[int, int, int] | None = None
    activation: str | None = None
    threshold: float = 0.5
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.0
    sw_batch_size: int = 1
    blend_mode: str = "constant"
    sigma_scale: float = 0.125
    notes: list[str] = field(default_factory=list)


def _arg(component: dict[str, Any], key: str, default: Any, config: BundleConfig, where: str) -> Any:
    """One argument, resolved; arguments the node does not read are never resolved (they may be expressions
    about MONAI's own workflow, such as a device)."""
    if key not in component:
        return default
    return config.resolve(component[key], where=f"{where}.{key}")


def _triple(value: Any, what: str, where: str, cast: type = float) -> tuple[Any, Any, Any]:
    values = [value] * 3 if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(values, list | tuple) or len(values) != 3 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise BundleRefused(f"{where}: {what} must be a number or three numbers, found {value!r}")
    return tuple(cast(v) for v in values)  # type: ignore[return-value]


def _transform_list(config: BundleConfig, config_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, component) for each enabled transform of the Compose at ``config_id`` (references followed)."""
    if not config.has(config_id):
        return []
    compose = config.follow(config.lookup(config_id), where=config_id)
    if isinstance(compose, list):
        items = compose
    elif isinstance(compose, dict) and target_name(compose, where=config_id, prefixes=TRANSFORM_PREFIXES) == "Compose":
        items = config.follow(compose.get("transforms", []), where=f"{config_id}.transforms")
        if not isinstance(items, list):
            raise BundleRefused(f"{config_id}.transforms must be a list, found {type(items).__name__}")
    else:
        raise BundleRefused(f"{config_id} must be a Compose of transforms")
    out = []
    for i, item in enumerate(items):
        where = f"{config_id}.transforms[{i}]"
        item = config.follow(item, where=where)
        if not isinstance(item, dict):
            raise BundleRefused(f"{where} must be a transform, found {item!r}")
        if not is_disabled(item, config, where=where):
            out.append((where, item))
    return out


def parse_preprocessing(config: BundleConfig, steps: Steps) -> None:
    geometry_seen_after_spacing = False
    for where, item in _transform_list(config, "preprocessing"):
        name = target_name(item, where=where, prefixes=TRANSFORM_PREFIXES)
        label = f"{where} ({name})"
        if name in _PASS_THROUGH:
            if name == "CastToTyped":
                dtype = str(_arg(item, "dtype", "float32", config, label))
                if "float32" not in dtype and dtype not in ("float", "torch.float"):
                    raise BundleRefused(f"{label}: casting to {dtype} is not supported (the node feeds float32)")
            continue
        if name == "Orientationd":
            axcodes = _arg(item, "axcodes", None, config, label)
            if not isinstance(axcodes, str) or len(axcodes) != 3:
                raise BundleRefused(f"{label}: axcodes must be three letters such as 'RAS', found {axcodes!r}")
            if steps.pixdim is not None and len(set(steps.pixdim)) > 1:
                geometry_seen_after_spacing = True
            steps.axcodes = axcodes.upper()
        elif name == "Spacingd":
            pixdim = _triple(_arg(item, "pixdim", None, config, label), "pixdim", label)
            if any(v <= 0 for v in pixdim):
                raise BundleRefused(f"{label}: pixdim {pixdim} keeps some axes' spacing; the pipeline resamples all three")
            steps.pixdim = pixdim
        elif name in _INTENSITY:
            args = {k: config.resolve(v, where=f"{label}.{k}") for k, v in item.items()
                    if not (k.startswith("_") and k.endswith("_")) and k not in _KEY_ARGS}
            zscore = (name == "NormalizeIntensityd" and args.get("nonzero") is True and args.get("channel_wise") is True
                      and args.get("subtrahend") is None and args.get("divisor") is None)
            if zscore and not steps.model_intensity and steps.normalisation == "none":
                steps.normalisation = "zscore_nonzero"
                continue
            try:
                transform = _INTENSITY[name](**args)
            except Exception as exc:
                raise BundleRefused(f"{label}: arguments {args} rejected by MONAI: {exc}") from None
            steps.model_intensity.append((f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})", transform))
        elif name == "DivisiblePadd":
            k = _arg(item, "k", None, config, label)
            ks = set(_triple(k, "k", label, int))
            if len(ks) != 1 or min(ks) < 1:
                raise BundleRefused(f"{label}: k must be one positive number for all axes, found {k!r}")
            steps.pad_k = ks.pop()
        elif name == "SpatialPadd":
            steps.pad_size = _triple(_arg(item, "spatial_size", None, config, label), "spatial_size", label, int)
        else:
            raise BundleRefused(f"{label}: transform {name!r} is not one the node can map onto its steps")
    if geometry_seen_after_spacing:
        raise BundleRefused("preprocessing resamples to an anisotropic pixdim before reorienting: the axes pixdim "
                            "refers to are not known")


def parse_postprocessing(config: BundleConfig, steps: Steps) -> None:
    activation = None
    discretised = False
    threshold: float | None = None
    argmax = False
    for where, item in _transform_list(config, "postprocessing"):
        name = target_name(item, where=where, prefixes=TRANSFORM_PREFIXES)
        label = f"{where} ({name})"
        if name == "Activationsd":
            if _arg(item, "other", None, config, label) is not None:
                raise BundleRefused(f"{label}: a custom activation ('other') is not supported")
            sigmoid = bool(_arg(item, "sigmoid", False, config, label))
            softmax = bool(_arg(item, "softmax", False, config, label))
            if sigmoid and softmax:
                raise BundleRefused(f"{label}: both sigmoid and softmax")
            if discretised and (sigmoid or softmax):
                raise BundleRefused(f"{label}: activation after discretisation")
            activation = "sigmoid" if sigmoid else "softmax" if softmax else activation
        elif name == "AsDiscreted":
            if _arg(item, "rounding", None, config, label) is not None:
                raise BundleRefused(f"{label}: rounding is not supported")
            argmax = bool(_arg(item, "argmax", False, config, label))
            value = _arg(item, "threshold", None, config, label)
            if value is None and _arg(item, "threshold_values", False, config, label):  # MONAI < 0.9
                value = _arg(item, "logit_thresh", 0.5, config, label)
            if isinstance(value, bool) or (value is not None and not isinstance(value, int | float)):
                raise BundleRefused(f"{label}: threshold must be a number, found {value!r}")
            threshold = None if value is None else float(value)
            if argmax and threshold is not None:
                raise BundleRefused(f"{label}: both argmax and threshold")
            discretised = discretised or argmax or threshold is not None
        elif name == "Invertd" or name in _POST_OUTPUT:
            continue
        elif name == "Lambdad" and discretised:
            steps.notes.append(f"{label}: a label re-encoding for the bundle's own file output, not run (the node "
                               "writes one segment per region)")
        else:
            raise BundleRefused(f"{label}: transform {name!r} is not one the node can map onto its steps")
    if activation is None and argmax:
        activation = "softmax"  # argmax of logits == argmax of their softmax
    elif activation is None and threshold is not None:
        activation = "sigmoid"  # a threshold t on logits is sigmoid(logit) > sigmoid(t)
        threshold = 1.0 / (1.0 + math.exp(-threshold))
        steps.notes.append(f"threshold on logits becomes probability > {threshold:.4f}")
    if activation == "sigmoid" and argmax:
        raise BundleRefused("postprocessing takes the argmax of sigmoid outputs; the node thresholds sigmoid outputs")
    if activation == "softmax" and threshold is not None:
        raise BundleRefused("postprocessing thresholds softmax outputs; the node takes their argmax")
    steps.activation = activation
    if threshold is not None:
        steps.threshold = threshold


def parse_inferer(config: BundleConfig, steps: Steps) -> None:
    if not config.has("inferer"):
        steps.notes.append("no inferer in the config: the whole volume at once")
        return
    item = config.follow(config.lookup("inferer"), where="inferer")
    if not isinstance(item, dict):
        raise BundleRefused(f"inferer must be a component, found {item!r}")
    name = target_name(item, where="inferer", prefixes=INFERER_PREFIXES)
    label = f"inferer ({name})"
    if name == "SimpleInferer":
        return
    if name not in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
        raise BundleRefused(f"{label}: inferer {name!r} is not one the node runs (SlidingWindowInferer, SimpleInferer)")
    steps.roi_size = _triple(_arg(item, "roi_size", None, config, label), "roi_size", label, int)
    if any(v == 0 or v < -1 for v in steps.roi_size):
        raise BundleRefused(f"{label}: roi_size {steps.roi_size} must be positive (or -1: the image's extent)")
    steps.overlap = float(_arg(item, "overlap", 0.25, config, label))
    if not 0.0 <= steps.overlap < 1.0:
        raise BundleRefused(f"{label}: overlap must be in [0, 1), found {steps.overlap}")
    steps.sw_batch_size = max(1, int(_arg(item, "sw_batch_size", 1, config, label)))
    steps.blend_mode = str(_arg(item, "mode", "constant", config, label))
    if steps.blend_mode not in ("constant", "gaussian"):
        raise BundleRefused(f"{label}: blending mode {steps.blend_mode!r} (constant or gaussian)")
    steps.sigma_scale = float(_arg(item, "sigma_scale", 0.125, config, label))


def parse_steps(config: BundleConfig) -> Steps:
    steps = Steps()
    parse_preprocessing(config, steps)
    parse_postprocessing(config, steps)
    parse_inferer(config, steps)
    return steps


def apply_normalisation(image: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    """The ``zscore_nonzero`` normalisation as MONAI's NormalizeIntensity(nonzero=True, channel_wise=True) does
    it (what the BraTS bundle's NormalizeIntensityd does), for pipelines, tests and the benchmark."""
    if normalisation == "none":
        return np.asarray(image, dtype=np.float32)
    if normalisation != "zscore_nonzero":
        raise ValueError(f"apply_normalisation handles 'zscore_nonzero' and 'none', got {normalisation!r}")
    out = mt.NormalizeIntensity(nonzero=True, channel_wise=True)(np.asarray(image, dtype=np.float32))
    return np.asarray(out, dtype=np.float32)
