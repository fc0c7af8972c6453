"""Deterministic UIDs for the objects the node writes.

A re-run of a pipeline on the same series with the same model version must produce the same Series and
SOP Instance UIDs, so the PACS replaces the earlier result instead of storing a duplicate.

The UIDs live under the ``2.25`` root (PS3.5 B.2): ``2.25.`` followed by the decimal value of a UUID.
The UUID is a name-based one (RFC 4122 version 5) computed from the inputs, so no organisational root is
invented and nothing random is involved.

Why not ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=[...])``: with ``prefix=None`` pydicom
ignores ``entropy_srcs`` and returns a random UUID-derived UID; with ``prefix="2.25."`` it appends a
truncated SHA-512 integer that is not a UUID, which the ``2.25`` arc does not allow.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from pydicom.uid import UID

#: Fixed namespace for every NeuroNova name-based UUID (itself name-based, so it is reproducible).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:neuronova:dicom-output-uids")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def derive_uid(*parts: str | int) -> UID:
    """A UID under ``2.25`` that depends only on ``parts`` (strings and integers, order matters)."""
    if not parts:
        raise ValueError("derive_uid needs at least one part, found none")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise TypeError(f"UID parts must be str or int, found {type(part).__name__}: {part!r}")
    # JSON keeps ("a", "bc") and ("ab", "c") apart, which plain concatenation would not.
    name = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True)
    uid = UID(f"2.25.{uuid.uuid5(NAMESPACE, name).int}")
    assert uid.is_valid  # at most 44 characters: "2.25." plus 39 digits
    return uid


def device_uid(model_sha256: str) -> UID:
    """The Device UID of the model whose weights have this SHA-256 (same weights, same device)."""
    if not isinstance(model_sha256, str):
        raise TypeError(f"model_sha256 must be a str, found {type(model_sha256).__name__}")
    digest = model_sha256.lower()
    if not _SHA256.match(digest):
        raise ValueError(f"model_sha256 must be 64 hexadecimal characters, found {model_sha256!r}")
    return derive_uid("device", digest)


@dataclass(frozen=True)
class UIDScope:
    """The UIDs of one pipeline run's results: fixed by the source series, pipeline and model version.

    ``kind`` names the object family ("seg", "sr", "sc", ...): each kind is its own series, because a
    DICOM series holds one modality.
    """

    source_series_uid: str
    pipeline: str
    model_version: str

    def __post_init__(self) -> None:
        for field in ("source_series_uid", "pipeline", "model_version"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise TypeError(f"{field} must be a str, found {type(value).__name__}")
            if not value:
                raise ValueError(f"{field} must not be empty")

    def _uid(self, role: str, kind: str, index: int) -> UID:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty str, found {kind!r}")
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, found {type(index).__name__}")
        return derive_uid(role, self.source_series_uid, self.pipeline, self.model_version, kind, index)

    def series(self, kind: str) -> UID:
        return self._uid("series", kind, 0)

    def instance(self, kind: str, index: int = 1) -> UID:
        return self._uid("instance", kind, index)

    def tracking(self, kind: str, index: int) -> UID:
        """Tracking UID of a finding (a segment, a measurement group)."""
        return self._uid("tracking", kind, index)
