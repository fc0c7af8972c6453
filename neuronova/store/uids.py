"""UID validation: a UID names files, so it is checked before it touches a path."""

from __future__ import annotations

import re

from neuronova.errors import InvalidUID

# PS3.5 9.1: components of digits separated by dots, no leading zero in a component, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def validate_uid(value: object, *, name: str = "UID") -> str:
    """Return ``value`` when it is a valid DICOM UID, else raise InvalidUID saying which attribute was bad."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{name} is not a valid DICOM UID: {shown}")
    return value  # type: ignore[return-value]
