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
- ``role``: the series' role for the rule's study pipeline (see below), e.g. "t1c"
- ``contrast``: true when ContrastBolusAgent must be present (non-empty), false when it must be absent
- ``scanning_sequence``, ``sequence_variant``: values that must all be in ScanningSequence / SequenceVariant;
  ``exclude_scanning_sequence``: none of them may be
- ``min_/max_repetition_time``, ``min_/max_echo_time``, ``min_/max_inversion_time``: bounds in ms on
  RepetitionTime, EchoTime, InversionTime (a series without the attribute does not match a bound on it)

Study pipelines take several series of one study, each in a role. A ``[[study]]`` table declares one:
``pipeline``; ``roles`` (the roles it takes, in preference order for the reference series); ``required`` (the
roles it cannot run without; default all); ``missing``: what happens when a role has no series once the study
is stable: ``"run"`` (run with the roles present when the required ones are), ``"wait"`` (wait up to
``wait_seconds`` after the study's last instance for the others, then run as "run"), ``"fail"`` (the job fails
with SERIES_ROLE_MISSING); under "run" a study without its required roles gets no job of the pipeline, under
"wait" its job fails after the wait; ``replaces``: series-level pipelines that do not run on the input series
when the study pipeline does (e.g. a single-series model). Rules naming a study pipeline must give a ``role`` (one of its roles); a series gets
the role of the first such rule it matches; when several series share a role the one with the most slices
(then the latest in the index) fills it.

A file is validated whole when loaded; a ConfigError names the file, the rule and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from neuronova.errors import ConfigError

ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
_LIST_KEYS = ("modality", "body_part", "image_type", "exclude_image_type", "orientation")
_REGEX_KEYS = ("series_description", "exclude_series_description")
_INT_KEYS = ("min_slices", "max_slices")
_SEQ_LIST_KEYS = ("scanning_sequence", "sequence_variant", "exclude_scanning_sequence")
_TIME_KEYS = ("min_repetition_time", "max_repetition_time", "min_echo_time", "max_echo_time",
              "min_inversion_time", "max_inversion_time")
KNOWN_KEYS = frozenset({"name", "pipeline", "enabled", "role", "contrast", *_LIST_KEYS, *_REGEX_KEYS, *_INT_KEYS,
                        *_SEQ_LIST_KEYS, *_TIME_KEYS})
STUDY_KEYS = frozenset({"pipeline", "roles", "required", "missing", "wait_seconds", "enabled", "replaces"})
MISSING_POLICIES = ("run", "wait", "fail")


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
    contrast_agent: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None


@dataclass(frozen=True)
class StudySpec:
    """A study pipeline: the roles it takes and what happens when one has no series."""

    pipeline: str
    roles: tuple[str, ...]
    required: tuple[str, ...]
    missing: str = "wait"
    wait_seconds: float = 300.0
    #: Series-level pipelines that do not run on this study pipeline's input series when it runs.
    replaces: tuple[str, ...] = ()


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
    role: str | None = None
    contrast: bool | None = None
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    exclude_scanning_sequence: tuple[str, ...] = ()
    #: attribute -> (min, max) in ms, either None
    times: tuple[tuple[str, float | None, float | None], ...] = ()

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
        return self._sequence_mismatch(s)

    def _sequence_mismatch(self, s: SeriesInfo) -> str | None:
        if self.contrast is not None and bool(s.contrast_agent.strip()) != self.contrast:
            return "contrast agent " + ("absent" if self.contrast else "present")
        scanning = {v.upper() for v in s.scanning_sequence}
        if self.scanning_sequence and not set(self.scanning_sequence) <= scanning:
            return f"scanning sequence lacks {sorted(set(self.scanning_sequence) - scanning)}"
        if self.exclude_scanning_sequence and scanning & set(self.exclude_scanning_sequence):
            return f"scanning sequence has excluded {sorted(scanning & set(self.exclude_scanning_sequence))}"
        variant = {v.upper() for v in s.sequence_variant}
        if self.sequence_variant and not set(self.sequence_variant) <= variant:
            return f"sequence variant lacks {sorted(set(self.sequence_variant) - variant)}"
        for attribute, low, high in self.times:
            value = getattr(s, attribute)
            if value is None:
                return f"no {attribute.replace('_', ' ')}"
            if (low is not None and value < low) or (high is not None and value > high):
                return f"{attribute.replace('_', ' ')} {value:g} ms outside [{low}, {high}]"
        return None


@dataclass(frozen=True)
class RoutingDecision:
    series_uid: str
    pipelines: tuple[str, ...]
    matched_rules: tuple[str, ...]
    #: For the status API: which rules matched, or why none did (one reason per rule).
    reason: str
    #: Study pipeline -> the role this series matched for it (the first matching rule's).
    roles: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingRules:
    rules: tuple[Rule, ...]
    source: str
    #: Study pipelines by name.
    studies: Mapping[str, StudySpec] = field(default_factory=dict)

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
        roles: dict[str, str] = {}
        for r in matched:
            if r.role is not None:
                roles.setdefault(r.pipeline, r.role)
        pipelines = tuple(dict.fromkeys(r.pipeline for r in matched if r.role is None))
        if matched:
            reason = "matched " + ", ".join(f"{r.name} -> {r.pipeline}" for r in matched)
        else:
            reason = "no rule matched" + (f" ({'; '.join(misses)})" if misses else " (no rules)")
        return RoutingDecision(series.series_uid, pipelines, tuple(r.name for r in matched), reason, roles)


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
    unknown_top = set(doc) - {"rule", "study"}
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
    studies = _parse_studies(doc.get("study", []), source=source, known=known)
    for rule in rules:
        spec = studies.get(rule.pipeline)
        where = f"routing rules {source}: rule {rule.name!r}"
        if spec is None and rule.role is not None:
            raise ConfigError(f"{where}: key 'role': pipeline {rule.pipeline!r} has no [[study]] table")
        if spec is not None and rule.role not in spec.roles:
            raise ConfigError(f"{where}: key 'role' must be one of {list(spec.roles)} for study pipeline "
                              f"{rule.pipeline!r}, found {rule.role!r}")
    return RoutingRules(tuple(rules), source, studies)


def _parse_studies(raw: Any, *, source: str, known: frozenset[str] | None) -> dict[str, StudySpec]:
    if not isinstance(raw, list):
        raise ConfigError(f"routing rules {source}: 'study' must be an array of tables ([[study]])")
    out: dict[str, StudySpec] = {}
    for position, table in enumerate(raw, start=1):
        where = f"routing rules {source}: study {position}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: must be a table")
        pipeline = _table_pipeline(table, where=where, keys=STUDY_KEYS, known=known)
        if pipeline in out:
            raise ConfigError(f"{where}: pipeline {pipeline!r} has two [[study]] tables")
        roles = table.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r.strip() for r in roles) \
                or len(set(roles)) != len(roles):
            raise ConfigError(f"{where}: key 'roles' must be a non-empty list of distinct role names")
        required = table.get("required", roles)
        if not isinstance(required, list) or not set(required) <= set(roles) or not required:
            raise ConfigError(f"{where}: key 'required' must be a non-empty list of some of the roles {roles}")
        missing = table.get("missing", "wait")
        if missing not in MISSING_POLICIES:
            raise ConfigError(f"{where}: key 'missing' must be one of {list(MISSING_POLICIES)}, found {missing!r}")
        wait = table.get("wait_seconds", 300.0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
            raise ConfigError(f"{where}: key 'wait_seconds' must be a non-negative number, found {wait!r}")
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: key 'enabled' must be true or false, found {enabled!r}")
        replaces = table.get("replaces", [])
        if not isinstance(replaces, list) or not all(isinstance(r, str) and r.strip() for r in replaces):
            raise ConfigError(f"{where}: key 'replaces' must be a list of pipeline names, found {replaces!r}")
        if enabled:
            out[pipeline] = StudySpec(pipeline=pipeline, roles=tuple(roles),
                                      required=tuple(r for r in roles if r in required), missing=missing,
                                      wait_seconds=float(wait), replaces=tuple(replaces))
    return out


def _table_pipeline(table: Mapping[str, Any], *, where: str, keys: frozenset[str] | set[str],
                    known: frozenset[str] | None) -> str:
    """A rules table's keys checked against ``keys``, and its pipeline (one of ``known`` when given)."""
    unknown = set(table) - keys
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(keys)}")
    pipeline = table.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline.strip():
        raise ConfigError(f"{where}: key 'pipeline' is required (a non-empty string)")
    if known is not None and pipeline not in known:
        raise ConfigError(f"{where}: key 'pipeline': no pipeline named {pipeline!r}; known: {sorted(known)}")
    return pipeline


def _parse_rule(raw: Any, *, where: str, known: frozenset[str] | None) -> Rule | None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: key 'name' is required (a non-empty string)")
    where = f"{where} ({name!r})"
    pipeline = _table_pipeline(raw, where=where, keys=KNOWN_KEYS, known=known)
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
    for key in _SEQ_LIST_KEYS:
        if key in raw:
            values[key] = _str_list(raw[key], where=where, key=key)
    times: list[tuple[str, float | None, float | None]] = []
    for attribute in ("repetition_time", "echo_time", "inversion_time"):
        bounds = []
        for side in ("min", "max"):
            key = f"{side}_{attribute}"
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"{where}: key {key!r} must be a non-negative number of ms, found {value!r}")
            bounds.append(None if value is None else float(value))
        if bounds != [None, None]:
            times.append((attribute, bounds[0], bounds[1]))
    if times:
        values["times"] = tuple(times)
    if "role" in raw:
        if not isinstance(raw["role"], str) or not raw["role"].strip():
            raise ConfigError(f"{where}: key 'role' must be a non-empty string")
        values["role"] = raw["role"].strip().lower()
    if "contrast" in raw:
        if not isinstance(raw["contrast"], bool):
            raise ConfigError(f"{where}: key 'contrast' must be true or false, found {raw['contrast']!r}")
        values["contrast"] = raw["contrast"]
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
