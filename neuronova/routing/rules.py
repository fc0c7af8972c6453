"""Declarative routing: which pipelines apply to a series.

A TOML file of ``[[rule]]`` tables (the node ships ``default_rules.toml``; the ``routing_rules`` setting names
another). Each rule names a pipeline and matches series attributes; every key given must match (AND), and a
series gets every pipeline that at least one rule matched. Keys:

- ``name`` (required, unique), ``pipeline`` (required), ``enabled`` (default true)
- ``modality``, ``body_part``: a value or a list, case-insensitive, one must equal the series'
- ``series_description``, ``exclude_series_description``: a Python regex searched case-insensitively
- ``image_type``: values that must all be in ImageType; ``exclude_image_type``: none of them may be
- ``orientation``: a value or a list of "axial", "sagittal", "coronal", "oblique" (from ImageOrientationPatient)
- ``min_slices``, ``max_slices``: the series' slice count (instances, or frames of one multi-frame instance)

A file is validated whole when loaded; a ConfigError names the file, the rule and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from neuronova.errors import ConfigError

ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
_LIST_KEYS = ("modality", "body_part", "image_type", "exclude_image_type", "orientation")
_REGEX_KEYS = ("series_description", "exclude_series_description")
_INT_KEYS = ("min_slices", "max_slices")
KNOWN_KEYS = frozenset({"name", "pipeline", "enabled", *_LIST_KEYS, *_REGEX_KEYS, *_INT_KEYS})


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at, for one series."""

    series_uid: str
    modality: str = ""
    series_description: str = ""
    body_part: str = ""
    image_type: tuple[str, ...] = ()
    orientation: str | None = None
    slice_count: int = 0


@dataclass(frozen=True)
class Rule:
    name: str
    pipeline: str
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    exclude_image_type: tuple[str, ...] = ()
    orientation: tuple[str, ...] = ()
    series_description: re.Pattern[str] | None = None
    exclude_series_description: re.Pattern[str] | None = None
    min_slices: int = 0
    max_slices: int | None = None

    def mismatch(self, s: SeriesInfo) -> str | None:
        """Why ``s`` does not match (the first key that fails), or None when it matches."""
        if self.modality and s.modality.upper() not in self.modality:
            return f"modality {s.modality or '(none)'} not in {list(self.modality)}"
        if self.body_part and s.body_part.upper() not in self.body_part:
            return f"body part {s.body_part or '(none)'} not in {list(self.body_part)}"
        if self.series_description and not self.series_description.search(s.series_description):
            return "series description does not match"
        if self.exclude_series_description and self.exclude_series_description.search(s.series_description):
            return "series description is excluded"
        types = {t.upper() for t in s.image_type}
        if self.image_type and not set(self.image_type) <= types:
            return f"image type lacks {sorted(set(self.image_type) - types)}"
        if self.exclude_image_type and types & set(self.exclude_image_type):
            return f"image type has excluded {sorted(types & set(self.exclude_image_type))}"
        if self.orientation and s.orientation not in self.orientation:
            return f"orientation {s.orientation or '(unknown)'} not in {list(self.orientation)}"
        if s.slice_count < self.min_slices:
            return f"{s.slice_count} slices, fewer than {self.min_slices}"
        if self.max_slices is not None and s.slice_count > self.max_slices:
            return f"{s.slice_count} slices, more than {self.max_slices}"
        return None


@dataclass(frozen=True)
class RoutingDecision:
    series_uid: str
    pipelines: tuple[str, ...]
    matched_rules: tuple[str, ...]
    #: For the status API: which rules matched, or why none did (one reason per rule).
    reason: str


@dataclass(frozen=True)
class RoutingRules:
    rules: tuple[Rule, ...]
    source: str

    @property
    def pipeline_names(self) -> frozenset[str]:
        return frozenset(r.pipeline for r in self.rules)

    def route(self, series: SeriesInfo) -> RoutingDecision:
        matched: list[Rule] = []
        misses: list[str] = []
        for rule in self.rules:
            why = rule.mismatch(series)
            if why is None:
                matched.append(rule)
            else:
                misses.append(f"{rule.name}: {why}")
        pipelines = tuple(dict.fromkeys(r.pipeline for r in matched))
        if matched:
            reason = "matched " + ", ".join(f"{r.name} -> {r.pipeline}" for r in matched)
        else:
            reason = "no rule matched" + (f" ({'; '.join(misses)})" if misses else " (no rules)")
        return RoutingDecision(series.series_uid, pipelines, tuple(r.name for r in matched), reason)


def default_rules_path() -> Path:
    return Path(str(resources.files("neuronova.routing").joinpath("default_rules.toml")))


def load_rules(path: Path | None = None, *, known_pipelines: Iterable[str] | None = None) -> RoutingRules:
    """Read and validate a rules file (None: the shipped default). With ``known_pipelines``, a rule naming
    another pipeline is an error too."""
    path = default_rules_path() if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"routing rules {path}: cannot read: {exc.strerror}") from exc
    return parse_rules(text, source=str(path), known_pipelines=known_pipelines)


def parse_rules(text: str, *, source: str = "<rules>", known_pipelines: Iterable[str] | None = None) -> RoutingRules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"routing rules {source}: not valid TOML: {exc}") from exc
    unknown_top = set(doc) - {"rule"}
    if unknown_top:
        raise ConfigError(f"routing rules {source}: unknown top-level key(s) {sorted(unknown_top)}; "
                          "rules are [[rule]] tables")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"routing rules {source}: 'rule' must be an array of tables ([[rule]])")
    known = None if known_pipelines is None else frozenset(known_pipelines)
    rules: list[Rule] = []
    for position, raw in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw, where=f"routing rules {source}: rule {position}", known=known)
        if rule is None:
            continue
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"routing rules {source}: rule {position}: name {rule.name!r} is used twice")
        rules.append(rule)
    return RoutingRules(tuple(rules), source)


def _parse_rule(raw: Any, *, where: str, known: frozenset[str] | None) -> Rule | None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: key 'name' is required (a non-empty string)")
    where = f"{where} ({name!r})"
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    pipeline = raw.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline.strip():
        raise ConfigError(f"{where}: key 'pipeline' is required (a non-empty string)")
    if known is not None and pipeline not in known:
        raise ConfigError(f"{where}: key 'pipeline': no pipeline named {pipeline!r}; known: {sorted(known)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: key 'enabled' must be true or false, found {enabled!r}")
    values: dict[str, Any] = {}
    for key in _LIST_KEYS:
        if key in raw:
            values[key] = _str_list(raw[key], where=where, key=key)
    for key in _REGEX_KEYS:
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{where}: key {key!r} must be a regular expression string")
            try:
                values[key] = re.compile(raw[key], re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{where}: key {key!r}: invalid regular expression: {exc}") from exc
    for key in _INT_KEYS:
        if key in raw:
            if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 0:
                raise ConfigError(f"{where}: key {key!r} must be a non-negative integer, found {raw[key]!r}")
            values[key] = raw[key]
    bad = set(values.get("orientation", ())) - {o.upper() for o in ORIENTATIONS}
    if bad:
        raise ConfigError(f"{where}: key 'orientation': {sorted(o.lower() for o in bad)} not in {list(ORIENTATIONS)}")
    if "orientation" in values:
        values["orientation"] = tuple(o.lower() for o in values["orientation"])
    if values.get("max_slices") is not None and values["max_slices"] < values.get("min_slices", 0):
        raise ConfigError(f"{where}: key 'max_slices' is less than 'min_slices'")
    if not enabled:
        return None
    return Rule(name=name, pipeline=pipeline, **values)


def _str_list(value: Any, *, where: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{where}: key {key!r} must be a non-empty string or list of strings, found {value!r}")
    return tuple(v.strip().upper() for v in items)
