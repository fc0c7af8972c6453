"""Reading a MONAI bundle's configuration without running any of it.

MONAI's own ``ConfigParser`` instantiates every ``_target_`` it meets (any importable callable) and evaluates
``$`` expressions with ``eval``; a bundle downloaded from elsewhere could run any code that way. This module
is the small part of that parser the node needs, written here because MONAI offers no safe mode: it reads
JSON or YAML (safe loader) into plain values and resolves ``@id`` references between plain entries. It never
imports, instantiates or evaluates anything:

- a ``$`` expression in a part of the config the node uses refuses the bundle (the one exception is
  ``"$@id"``, which evaluates to the referenced entry and nothing else, so it is read as ``"@id"``);
- ``$`` expressions elsewhere (``imports``, ``device``, data lists, the evaluator, ``run``) are never read:
  they describe MONAI's own workflow, which the node replaces;
- ``%file#id`` macros (text pulled from other files) refuse the bundle where they are used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

#: Inference configs looked for, in this order, under ``<bundle>/configs/``.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: MONAI accepts both separators in ids ("a::b", formerly "a#b").
_ID_SPLIT = re.compile(r"::|#")
_PURE_REFERENCE = re.compile(r"^\$@[\w:#]+$")
#: Config files larger than this are not read (a config is a few KB; this bounds memory on a hostile file).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class BundleRefused(ValueError):
    """The bundle cannot be loaded safely or is not one the node can run; the message says why."""


def read_config_file(path: Path) -> Any:
    """Parse one JSON or YAML config file into plain Python values (no YAML tags, no objects)."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise BundleRefused(f"{path.name} is {size} bytes; a bundle config larger than {MAX_CONFIG_BYTES} is not read")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return YAML(typ="safe", pure=True).load(text)
    except Exception as exc:  # JSONDecodeError, YAMLError: the file's own syntax
        raise BundleRefused(f"{path.name} is not valid {path.suffix[1:].upper()}: {exc}") from None


def find_inference_config(bundle: Path) -> Path:
    for name in CONFIG_NAMES:
        candidate = bundle / "configs" / name
        if candidate.is_file():
            return candidate
    raise BundleRefused(f"the bundle has no configs/{' or configs/'.join(CONFIG_NAMES)}")


class BundleConfig:
    """A parsed inference config: entries by id, references resolved on request, nothing evaluated."""

    def __init__(self, raw: Any, source: str) -> None:
        if not isinstance(raw, dict):
            raise BundleRefused(f"{source} must hold a mapping at the top, found {type(raw).__name__}")
        self.raw = raw
        self.source = source

    def has(self, config_id: str) -> bool:
        try:
            self._lookup(config_id)
        except BundleRefused:
            return False
        return True

    def lookup(self, config_id: str) -> Any:
        """The raw entry ``config_id`` (nothing resolved)."""
        return self._lookup(config_id)

    def _lookup(self, config_id: str) -> Any:
        node: Any = self.raw
        for part in _ID_SPLIT.split(config_id):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BundleRefused(f"{self.source}: reference to {config_id!r}, which the config does not define")
        return node

    def get(self, config_id: str, *, where: str | None = None, components: bool = False) -> Any:
        """The entry ``config_id`` with its references resolved (see :meth:`resolve`)."""
        return self.resolve(self._lookup(config_id), where=where or config_id, components=components)

    def follow(self, value: Any, *, where: str) -> Any:
        """``value`` with top-level references followed (a component's own arguments are left unresolved)."""
        seen: list[str] = []
        while isinstance(value, str):
            if _PURE_REFERENCE.match(value):
                value = value[1:]
            if not value.startswith("@"):
                return self.resolve(value, where=where)  # refuses expressions and macros
            target = value[1:]
            if target in seen:
                raise BundleRefused(f"{self.source}: reference cycle {' -> '.join((*seen, target))}")
            seen.append(target)
            value = self._lookup(target)
        return value

    def resolve(self, value: Any, *, where: str, components: bool = False, _seen: tuple[str, ...] = ()) -> Any:
        """Resolve ``@id`` references in ``value`` into plain values.

        ``components``: whether mappings with a ``_target_`` may appear (transform lists do; network
        arguments must not: a nested component would be an object the node would have to build).
        Raises BundleRefused for a ``$`` expression, a macro, an unknown id or a reference cycle.
        """
        if isinstance(value, str):
            if _PURE_REFERENCE.match(value):
                value = value[1:]
            if value.startswith("$"):
                shown = value if len(value) <= 80 else value[:77] + "..."
                raise BundleRefused(f"{self.source}: {where} is the expression {shown!r}; the node never "
                                    "evaluates bundle code")
            if value.startswith("%"):
                raise BundleRefused(f"{self.source}: {where} is the macro {value!r}; macros are not followed")
            if value.startswith("@"):
                target = value[1:]
                if target in _seen:
                    raise BundleRefused(f"{self.source}: reference cycle {' -> '.join((*_seen, target))}")
                return self.resolve(self._lookup(target), where=f"{where} (@{target})", components=components,
                                    _seen=(*_seen, target))
            return value
        if isinstance(value, list):
            return [self.resolve(v, where=f"{where}[{i}]", components=components, _seen=_seen)
                    for i, v in enumerate(value)]
        if isinstance(value, dict):
            if "_target_" in value and not components:
                raise BundleRefused(f"{self.source}: {where} is a component ({value['_target_']!r}) where a plain "
                                    "value is expected")
            return {str(k): self.resolve(v, where=f"{where}.{k}", components=components, _seen=_seen)
                    for k, v in value.items()}
        if value is None or isinstance(value, bool | int | float):
            return value
        raise BundleRefused(f"{self.source}: {where} has a value of type {type(value).__name__}")


def target_name(component: dict[str, Any], *, where: str, prefixes: tuple[str, ...]) -> str:
    """The class name a ``_target_`` names: a bare name or one under an allowed module prefix.

    ``SegResNet``, ``monai.networks.nets.SegResNet`` and ``monai.networks.nets.segresnet.SegResNet`` all give
    ``SegResNet``; anything outside ``prefixes`` (another package, the bundle's own scripts) is refused.
    """
    target = component.get("_target_")
    if not isinstance(target, str) or not target:
        raise BundleRefused(f"{where}: _target_ must be a class name, found {target!r}")
    if target.startswith(("$", "@", "%")):
        raise BundleRefused(f"{where}: _target_ {target!r} is an expression or reference, not a class name")
    module, _, name = target.rpartition(".")
    if module and not any(module == p or module.startswith(p + ".") for p in prefixes):
        raise BundleRefused(f"{where}: _target_ {target!r} lies outside {', '.join(prefixes)}; the node imports "
                            "nothing a bundle names")
    return name


def is_disabled(component: dict[str, Any], config: BundleConfig, *, where: str) -> bool:
    """MONAI's ``_disabled_`` flag, when it is a plain boolean (an expression refuses the bundle)."""
    flag = config.resolve(component.get("_disabled_", False), where=f"{where}._disabled_")
    if isinstance(flag, str):
        return flag.strip().lower() == "true"
    return bool(flag)


def component_args(component: dict[str, Any], config: BundleConfig, *, where: str,
                   ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keyword arguments of a component, resolved into plain values (``_meta_`` keys and ``ignore`` left out)."""
    mode = component.get("_mode_", "default")
    if mode != "default":
        raise BundleRefused(f"{where}: _mode_ {mode!r} is not supported (only plain instantiation)")
    return {k: config.resolve(v, where=f"{where}.{k}") for k, v in component.items()
            if not (k.startswith("_") and k.endswith("_")) and k not in ignore}
