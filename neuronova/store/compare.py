"""Is an arriving instance the same data set as the stored one with its SOP Instance UID?

The file meta (PS3.10) is not part of the data set: it names the sender's implementation and, for C-STORE,
is written by the receiver. So the comparison starts after it: byte for byte when both use one transfer
syntax (the common case, and cheap), else (or when a sender re-encoded the data set: group lengths, padding)
element by element with pydicom, pixel data compared decoded when the transfer syntaxes differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from neuronova.store.scan import ScannedInstance, scan_part10

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_TRAILING_PADDING = 0xFFFCFFFC


def _same_tail(a: BinaryIO, a_offset: int, b: BinaryIO, b_offset: int) -> bool:
    a.seek(0, 2)
    b.seek(0, 2)
    if a.tell() - a_offset != b.tell() - b_offset:
        return False
    a.seek(a_offset)
    b.seek(b_offset)
    while True:
        x, y = a.read(_CHUNK), b.read(_CHUNK)
        if x != y:
            return False
        if not x:
            return True


def same_data_set(new: BinaryIO, scanned: ScannedInstance, stored: Path) -> bool:
    """Whether ``new`` (scanned as ``scanned``) holds the same data set as the file at ``stored``."""
    with open(stored, "rb") as old:
        size = stored.stat().st_size
        try:
            old_scan = scan_part10(old, size)
        except Exception:  # noqa: BLE001 - a stored file that no longer scans is not the same as a valid one
            return False
        if old_scan.transfer_syntax == scanned.transfer_syntax and _same_tail(
                new, scanned.dataset_offset, old, old_scan.dataset_offset):
            return True
        new.seek(0)
        old.seek(0)
        try:
            a, b = pydicom.dcmread(new), pydicom.dcmread(old)
            return _same(a, b, same_syntax=old_scan.transfer_syntax == scanned.transfer_syntax, top=True)
        except Exception as exc:  # noqa: BLE001 - what cannot be compared is not the same
            log.info("data sets could not be compared (%s): taken as different", type(exc).__name__)
            return False


def _same(a: Dataset, b: Dataset, *, same_syntax: bool, top: bool = False) -> bool:
    # Group lengths and Data Set Trailing Padding carry no content (senders drop or add them: dcmtk drops the
    # padding when it sends a file).
    tags = {t for t in (*a.keys(), *b.keys()) if t.element != 0 and t != _TRAILING_PADDING}
    pixels_differ = False
    for tag in tags:
        if tag not in a or tag not in b:
            return False
        if top and int(tag) in _PIXEL_TAGS:
            if same_syntax:
                if a[tag].value != b[tag].value:
                    return False
            else:
                pixels_differ = True
            continue
        if not _same_value(a[tag].value, b[tag].value, same_syntax=same_syntax):
            return False
    if pixels_differ:
        # Another transfer syntax: the same data set decodes to the same pixels (lossless), and only then.
        return bool(np.array_equal(a.pixel_array, b.pixel_array))
    return True


def _same_value(x: Any, y: Any, *, same_syntax: bool) -> bool:
    if isinstance(x, Sequence) or isinstance(y, Sequence):
        if not (isinstance(x, Sequence) and isinstance(y, Sequence)) or len(x) != len(y):
            return False
        return all(_same(i, j, same_syntax=same_syntax) for i, j in zip(x, y, strict=True))
    return bool(x == y)
