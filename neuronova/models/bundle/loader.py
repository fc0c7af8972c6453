"""Loading a MONAI bundle directory (``<model_dir>/<model_id>/`` in MONAI's layout) as a VolumeSegmenter.

Layout read: ``configs/metadata.json`` (name, version, inputs and outputs), ``configs/inference.json`` (or
``.yaml``: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``), weights in
``models/model.safetensors`` or ``models/model.pt`` (or, without torch weights, ``models/model.onnx``), and an
optional ``neuronova.json`` beside them for what the bundle does not say (series roles, region names,
orientation, pinned SHA-256 digests). The bundle's ``scripts/`` and ``$`` expressions are never run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neuronova.models.bundle.config import (BundleConfig, BundleRefused, component_args, find_inference_config,
                                            read_config_file, target_name)
from neuronova.models.bundle.networks import (NETWORK_PREFIXES, build_network, gradcam_layer, load_state,
                                              read_weights)
from neuronova.models.bundle.segmenter import OnnxRunner, TorchRunner, VolumeModel, WindowSteps
from neuronova.models.bundle.transforms import parse_steps
from neuronova.models.metadata import ModelMetadata, sha256_file
from neuronova.models.runtime import PRECISIONS, torch_device
from neuronova.models.volumetric import OutputRegion, Postprocessing, Preprocessing

BUNDLE_METADATA = Path("configs") / "metadata.json"
SIDE_FILE = "neuronova.json"
LAYOUT = "monai_bundle"

#: Series roles the router gives, and the names bundles (BraTS 2018-2023, MONAI's channel_def) use for them;
#: compared without case, spaces, "_" and "-".
ROLE_NAMES = {
    "t1c": {"t1c", "t1ce", "t1gd", "t1post", "t1+c", "t1wc", "t1w+c", "t1+gd", "t1contrast", "t1wce"},
    "t1": {"t1", "t1w", "t1n", "t1native", "t1pre"},
    "t2": {"t2", "t2w"},
    "flair": {"flair", "t2flair", "t2f", "t2wflair"},
}
_BACKGROUND = {"background", "bg", "0"}
_SPACING = re.compile(r"(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*mm", re.IGNORECASE)


class SideFile(BaseModel):
    """``neuronova.json``: what the node needs that the bundle does not say.

    ``roles`` and ``regions`` name the bundle's channels in the node's terms and win over the bundle's own
    names; ``axcodes``, ``pixdim`` and ``activation`` are used only where the config has no Orientationd,
    Spacingd or activation; ``threshold`` is the site's operating point and replaces the bundle's.
    """

    model_config = ConfigDict(extra="forbid")

    roles: list[str] | None = None
    optional_roles: list[str] = Field(default_factory=list)
    #: output index (channel for sigmoid outputs, label value for softmax) -> region name
    regions: dict[str, str] | None = None
    axcodes: str | None = None
    pixdim: list[float] | None = None
    activation: Literal["softmax", "sigmoid"] | None = None
    threshold: float | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    #: relative path -> SHA-256, checked before anything is read (MONAI bundles carry no digests)
    files: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    not_for_clinical_use: bool = True


@dataclass
class BundleInfo:
    """What /health shows about a bundle even when it is refused."""

    name: str
    version: str
    model_hash: str
    metadata: dict[str, Any]
    #: relative path -> SHA-256 of every file of the bundle
    files: dict[str, str]


def is_bundle(path: Path) -> bool:
    return (path / BUNDLE_METADATA).is_file()


def bundle_files(path: Path) -> list[Path]:
    """Every file of the bundle, sorted; a link that leads outside the bundle refuses it."""
    root = path.resolve()
    files = []
    for item in sorted(path.rglob("*")):
        resolved = item.resolve()
        if resolved != root and root not in resolved.parents:
            raise BundleRefused(f"{item.relative_to(path)} links outside the bundle directory")
        if item.is_file():
            files.append(item)
    return files


def bundle_hash(model_id: str, version: str, files: dict[str, str]) -> str:
    """One SHA-256 over the bundle: its id, version and every file's path and digest (the formula of
    :attr:`ModelMetadata.model_hash`, so the bundle's card gives the same hash)."""
    text = "\n".join(f"{name}:{digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(f"{model_id}:{version}\n{text}".encode()).hexdigest()


def _read_bundle_metadata(path: Path) -> dict[str, Any]:
    raw = read_config_file(path / BUNDLE_METADATA)
    if not isinstance(raw, dict):
        raise BundleRefused(f"{BUNDLE_METADATA.as_posix()} must hold a mapping")
    return raw


def read_bundle_version(path: Path) -> str:
    """The bundle's declared version (configs/metadata.json), without hashing or loading anything else."""
    return str(_read_bundle_metadata(path).get("version", "")) or "unversioned"


def read_bundle_info(path: Path) -> BundleInfo:
    raw = _read_bundle_metadata(path)
    version = str(raw.get("version", "")) or "unversioned"
    files = {f.relative_to(path).as_posix(): sha256_file(f) for f in bundle_files(path)}
    return BundleInfo(name=str(raw.get("name") or path.name), version=version,
                      model_hash=bundle_hash(path.name, version, files), metadata=raw, files=files)


def bundle_card(path: Path, info: BundleInfo, side: SideFile, *, roles: tuple[str, ...], preprocessing: Preprocessing,
                postprocessing: Postprocessing, steps: WindowSteps) -> ModelMetadata:
    """The node's model card for a bundle: what the registry, /health and the writers read of every model."""
    meta = info.metadata
    return ModelMetadata(
        id=path.name, name=info.name, version=info.version, task="segmentation",
        description=side.description or str(meta.get("description", "")),
        labels={str(r.index): r.name for r in postprocessing.regions},
        input={"roles": list(roles), "optional_roles": sorted(side.optional_roles), "axcodes": preprocessing.axcodes,
               "pixdim": list(preprocessing.pixdim) if preprocessing.pixdim else None,
               "normalisation": preprocessing.normalisation,
               "roi_size": list(steps.roi_size) if steps.roi_size else None, "overlap": steps.overlap},
        output={"activation": postprocessing.activation, "threshold": postprocessing.threshold},
        intended_use=str(meta.get("intended_use", "")) or "not stated by the bundle",
        not_for_clinical_use=side.not_for_clinical_use, files=info.files,
        framework={"format": LAYOUT, **{k: str(meta[k]) for k in ("monai_version", "pytorch_version") if k in meta}})


def read_side_file(path: Path) -> SideFile:
    side = path / SIDE_FILE
    if not side.is_file():
        return SideFile()
    try:
        return SideFile.model_validate_json(side.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise BundleRefused(f"{SIDE_FILE}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def verify_pins(path: Path, side: SideFile) -> None:
    root = path.resolve()
    for name, expected in side.files.items():
        target = (path / name).resolve()
        if root not in target.parents or not target.is_file():
            raise BundleRefused(f"{SIDE_FILE} pins {name!r}, which is not a file of the bundle")
        actual = sha256_file(target)
        if actual != expected:
            raise BundleRefused(f"{name} has SHA-256 {actual[:12]}..., {SIDE_FILE} says {expected[:12]}...")


def role_of(name: str) -> str | None:
    key = re.sub(r"[\s_\-]", "", name.lower())
    return next((role for role, names in ROLE_NAMES.items() if key in names), None)


def _first(mapping: Any) -> dict[str, Any]:
    if isinstance(mapping, dict) and mapping:
        value = mapping.get("image", mapping.get("pred", next(iter(mapping.values()))))
        return value if isinstance(value, dict) else {}
    return {}


def declared_roles(metadata: dict[str, Any], side: SideFile) -> tuple[str, ...]:
    """Series roles in channel order: neuronova.json, else the bundle's channel_def, else its image_classes."""
    known = sorted(ROLE_NAMES)
    if side.roles is not None:
        unknown = [r for r in side.roles if r not in ROLE_NAMES]
        if unknown or not side.roles:
            raise BundleRefused(f"{SIDE_FILE} roles {side.roles} must be among {known}")
        return tuple(side.roles)
    image = _first(metadata.get("network_data_format", {}).get("inputs"))
    n = image.get("num_channels")
    channel_def = image.get("channel_def")
    if isinstance(channel_def, dict) and channel_def:
        names = [str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k) if str(k).isdigit() else 0)]
        roles = [role_of(name) for name in names]
        if None in roles:
            bad = [name for name, role in zip(names, roles, strict=True) if role is None]
            raise BundleRefused(f"input channels {bad} are not series roles the node knows ({known}); name the "
                                f"roles in {SIDE_FILE}")
        return tuple(r for r in roles if r is not None)
    text = str(metadata.get("image_classes", ""))
    roles = [r for r in (role_of(token) for token in re.split(r"[,;\s]+", text)) if r is not None]
    if roles and (n is None or len(roles) == int(n)):
        return tuple(roles)
    raise BundleRefused(f"the bundle does not name its {n or 'input'} channel(s) as series roles; give roles in {SIDE_FILE}")


def _region_name(name: str) -> str:
    return re.sub(r"\btumor\b", "tumour", name.strip().lower())


def declared_regions(metadata: dict[str, Any], side: SideFile, activation: str) -> tuple[tuple[OutputRegion, ...], int | None]:
    """The output regions and the number of output channels (when the bundle says)."""
    pred = _first(metadata.get("network_data_format", {}).get("outputs"))
    n = pred.get("num_channels")
    source = side.regions if side.regions is not None else pred.get("channel_def")
    if not isinstance(source, dict) or not source:
        raise BundleRefused(f"the bundle does not name its output channels; give regions in {SIDE_FILE}")
    regions = []
    for key, name in source.items():
        if not str(key).isdigit():
            raise BundleRefused(f"output region key {key!r} must be a channel number")
        index, label = int(key), _region_name(str(name))
        if activation == "softmax" and (index == 0 or label in _BACKGROUND):
            continue  # softmax label 0 is background, never a segment
        regions.append(OutputRegion(index=index, name=label))
    n_out = int(n) if isinstance(n, int) else None
    if n_out is not None and any(r.index >= n_out for r in regions):
        raise BundleRefused(f"output regions {[r.index for r in regions]} exceed the {n_out} output channels")
    return tuple(sorted(regions, key=lambda r: r.index)), n_out


def _runner(path: Path, config: BundleConfig, side: SideFile, device: str,
            notes: list[str]) -> tuple[TorchRunner | OnnxRunner, int | None]:
    """The network runner and its declared number of outputs (``out_channels``), from whichever weights exist."""
    weights = next((path / name for name in ("models/model.safetensors", "models/model.pt") if (path / name).is_file()),
                   None)
    if weights is None:
        if (path / "models" / "model.onnx").is_file():
            return OnnxRunner(path / "models" / "model.onnx", device), None
        if (path / "models" / "model.ts").is_file():
            raise BundleRefused("the bundle has only models/model.ts: TorchScript archives carry code, not loaded")
        raise BundleRefused("the bundle has no models/model.safetensors, models/model.pt or models/model.onnx")
    where = "network_def" if config.has("network_def") else "network"
    component = config.follow(config.lookup(where), where=where)
    if not isinstance(component, dict):
        raise BundleRefused(f"{where} must be a network component, found {component!r}")
    name = target_name(component, where=where, prefixes=NETWORK_PREFIXES)
    args = component_args(component, config, where=where)
    network, dropped = build_network(name, args, where=where)
    notes.extend(dropped)
    source = weights.relative_to(path).as_posix()
    load_state(network, read_weights(weights, source), source)
    out = args.get("out_channels")
    return (TorchRunner(network, torch_device(device), layer=gradcam_layer(name, network), precision=side.precision),
            out if isinstance(out, int) else None)


def load_bundle(path: Path, *, device: str = "auto", info: BundleInfo | None = None) -> VolumeModel:
    """Load and check a bundle; raises BundleRefused (or OSError) with the reason when it cannot be run safely."""
    info = info or read_bundle_info(path)
    side = read_side_file(path)
    verify_pins(path, side)
    config_path = find_inference_config(path)
    config = BundleConfig(read_config_file(config_path), f"configs/{config_path.name}")
    steps = parse_steps(config)
    notes = list(steps.notes)
    activation = steps.activation or side.activation
    if activation is None:
        raise BundleRefused("postprocessing neither activates nor discretises the outputs (softmax or sigmoid?); "
                            f"give activation in {SIDE_FILE}")
    roles = declared_roles(info.metadata, side)
    if not set(side.optional_roles) <= set(roles):
        raise BundleRefused(f"{SIDE_FILE} optional_roles {side.optional_roles} must be among the roles {list(roles)}")
    regions, n_out = declared_regions(info.metadata, side, activation)
    runner, out_channels = _runner(path, config, side, device, notes)
    if n_out is not None and out_channels is not None and n_out != out_channels:
        raise BundleRefused(f"metadata says {n_out} output channels, network_def out_channels={out_channels}")
    n_out = n_out or out_channels
    if isinstance(runner, OnnxRunner) and steps.roi_size is None and all(runner.fixed[2:]):
        steps.roi_size = tuple(runner.fixed[2:])  # type: ignore[assignment]
        steps.overlap = 0.25
        notes.append(f"windows of the graph's fixed size {steps.roi_size}")
    axcodes = steps.axcodes or side.axcodes
    if axcodes is None:
        axcodes = "RAS"
        notes.append(f"orientation not stated by the bundle: RAS assumed (set axcodes in {SIDE_FILE})")
    pixdim = steps.pixdim or (tuple(side.pixdim) if side.pixdim else None)  # type: ignore[arg-type]
    if pixdim is None and (match := _SPACING.search(str(info.metadata.get("image_classes", "")))):
        pixdim = tuple(float(v) for v in match.groups())
    if pixdim is not None and (len(pixdim) != 3 or min(pixdim) <= 0):
        raise BundleRefused(f"pixdim {pixdim} must be three positive spacings")
    if side.precision not in PRECISIONS:
        raise BundleRefused(f"precision {side.precision!r}")
    window = WindowSteps(roi_size=steps.roi_size, overlap=steps.overlap, sw_batch_size=steps.sw_batch_size,
                         blend_mode=steps.blend_mode, sigma_scale=steps.sigma_scale, intensity=steps.model_intensity,
                         pad_k=steps.pad_k, pad_size=steps.pad_size)
    notes.extend(f"applied by the model: {name}" for name, _ in steps.model_intensity)
    preprocessing = Preprocessing(axcodes=axcodes, pixdim=pixdim, normalisation=steps.normalisation)  # type: ignore[arg-type]
    postprocessing = Postprocessing(activation=activation,  # type: ignore[arg-type]
                                    threshold=side.threshold if side.threshold is not None else steps.threshold,
                                    regions=regions)
    card = bundle_card(path, info, side, roles=roles, preprocessing=preprocessing, postprocessing=postprocessing,
                       steps=window)
    return VolumeModel(path, card, device=device, layout=LAYOUT, roles=roles,
                       optional_roles=frozenset(side.optional_roles), preprocessing=preprocessing,
                       postprocessing=postprocessing, runner=runner, steps=window, n_outputs=n_out, notes=tuple(notes))
