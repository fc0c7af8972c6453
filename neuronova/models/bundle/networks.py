"""The networks a bundle may name, and its weights read as plain tensors.

Only the MONAI segmentation networks listed in :data:`NETWORKS` are built, from the package's own classes,
with the config's plain keyword arguments. The network is first built on torch's ``meta`` device (no memory)
to check its arguments and size, then for real. Weights are read by ``torch.load(weights_only=True)`` (torch's
restricted unpickler: tensors and containers only, any other global refuses the file) or by safetensors
(a header and raw bytes), then loaded strictly: every tensor with its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.networks import nets
from torch import nn

from neuronova.models.architectures import unet_bottleneck_name
from neuronova.models.bundle.config import BundleRefused

#: Networks by class name -> the Grad-CAM target layer (deepest encoder stage: the coarsest features).
NETWORKS: dict[str, tuple[type[nn.Module], Callable[[nn.Module], str]]] = {
    "SegResNet": (nets.SegResNet, lambda m: f"down_layers.{len(m.down_layers) - 1}"),  # type: ignore[arg-type]
    "UNet": (nets.UNet, unet_bottleneck_name),
    "BasicUNet": (nets.BasicUNet, lambda m: "down_4"),
    "DynUNet": (nets.DynUNet, lambda m: "bottleneck"),
    "SwinUNETR": (nets.SwinUNETR, lambda m: "encoder10"),
    "AttentionUnet": (nets.AttentionUnet, unet_bottleneck_name),
}
NETWORK_PREFIXES = ("monai.networks.nets",)
#: Arguments older bundles pass that this MONAI removed and that do not change the weights (SwinUNETR's
#: ``img_size``: the network now takes any size divisible by 32).
DROPPED_ARGS = {"SwinUNETR": frozenset({"img_size"})}
#: Refuse networks above this many parameters (a typo or a hostile config could ask for terabytes).
MAX_PARAMETERS = 2_000_000_000
WEIGHT_FILES = ("models/model.safetensors", "models/model.pt")


def build_network(name: str, args: dict[str, Any], *, where: str) -> tuple[nn.Module, list[str]]:
    """Build the allow-listed network ``name`` with ``args``; returns it and notes on dropped arguments."""
    if name not in NETWORKS:
        raise BundleRefused(f"{where}: network {name!r} is not one the node builds (allowed: {', '.join(NETWORKS)})")
    cls, _ = NETWORKS[name]
    notes = []
    for arg in sorted(DROPPED_ARGS.get(name, frozenset()) & set(args)):
        notes.append(f"{name} argument {arg}={args.pop(arg)!r} ignored (removed from MONAI; weights unaffected)")
    try:
        with torch.device("meta"):
            probe = cls(**args)
        count = sum(p.numel() for p in probe.parameters())
        del probe
        if count > MAX_PARAMETERS:
            raise BundleRefused(f"{where}: {name} would have {count} parameters (limit {MAX_PARAMETERS})")
        return cls(**args), notes
    except BundleRefused:
        raise
    except Exception as exc:  # TypeError/ValueError/AssertionError from the constructor: the config's arguments
        raise BundleRefused(f"{where}: {name}({', '.join(f'{k}={v!r}' for k, v in args.items())}) failed: "
                            f"{type(exc).__name__}: {exc}") from None


def gradcam_layer(name: str, network: nn.Module) -> str:
    return NETWORKS[name][1](network)


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A state dict from what a bundle checkpoint holds: the dict itself, or ``{"model": dict}`` (MONAI's
    CheckpointSaver with several objects), or ``{"state_dict": dict}``."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    elif isinstance(obj, dict) and len(obj) >= 1:
        inner = [v for k, v in obj.items() if k in ("model", "state_dict", "network") and isinstance(v, dict)]
        if len(inner) != 1:
            raise BundleRefused(f"{source} holds a dict with keys {sorted(map(str, obj))[:8]}, neither tensors nor "
                                "one 'model' state dict")
        return _as_state_dict(inner[0], source)
    else:
        raise BundleRefused(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
    keys = [str(k) for k in state]
    if all(k.startswith("module.") for k in keys):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_weights(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Tensors from ``model.safetensors`` or ``model.pt`` (restricted unpickler); never executes the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _as_state_dict(load_file(str(path), device="cpu"), source)
        except BundleRefused:
            raise
        except Exception as exc:
            raise BundleRefused(f"{source} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # UnpicklingError for any global outside torch's allow-list, or a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleRefused(f"{source} refused by torch.load(weights_only=True) (not plain tensors; a pickled "
                            f"object is never executed): {first}") from None
    return _as_state_dict(obj, source)


def load_state(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = " ".join(line.strip() for line in lines[:4])
        raise BundleRefused(f"{source} does not fit the network of network_def: {detail[:400]}") from None
