"""Fuzz target: the Part 10 completeness scan (store/scan.py) raises only InvalidDicom (or a subclass)."""

from __future__ import annotations

import io

from hypothesis import example, given
from hypothesis import strategies as st

from neuronova.errors import InvalidDicom
from neuronova.store.scan import scan_part10
from tests.fuzz.strategies import FUZZ, VALID_PART10, mutated


def _scan(data: bytes) -> None:
    try:
        scanned = scan_part10(io.BytesIO(data), len(data))
    except InvalidDicom:
        return
    assert scanned is not None


def test_the_valid_instance_scans() -> None:
    assert scan_part10(io.BytesIO(VALID_PART10), len(VALID_PART10)) is not None


@FUZZ
@given(mutated(VALID_PART10, max_mutations=3))
def test_damaged_instances(data: bytes) -> None:
    _scan(data)


@FUZZ
@given(st.binary(max_size=512).map(lambda tail: b"\0" * 128 + b"DICM" + tail))
@example(b"\0" * 128 + b"DICM")
def test_random_after_the_prefix(data: bytes) -> None:
    _scan(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _scan(data)
