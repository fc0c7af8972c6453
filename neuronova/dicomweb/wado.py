"""WADO-RS (PS3.18 10.4): retrieve stored studies, series and instances, their metadata, frames and bulk data.

- Instances: ``multipart/related; type="application/dicom"``, each part the Part 10 file exactly as stored,
  streamed from disk in chunks (memory holds one chunk). The node does not transcode: an Accept without a
  transfer-syntax parameter, or with ``transfer-syntax=*``, gets the stored transfer syntax (named in each
  part's Content-Type); asking for another one answers 406 (PS3.18's default, Explicit VR Little Endian, is
  given only when that is what was stored).
- Metadata: ``application/dicom+json``, one dataset per instance, streamed; binary values above 1 KiB at the
  top level (Pixel Data included) are ``BulkDataURI``s to ``.../instances/{sop}/bulkdata/{tag}``, and
  ``AvailableTransferSyntaxUID`` (0008,3002) names the stored transfer syntax.
- Frames: ``multipart/related; type="application/octet-stream"``, one part per requested frame, in request
  order: native pixel data is sliced from the file as stored (1-bit frames bit-packed, little endian),
  compressed pixel data is decoded with pydicom (colour as RGB). With ``transfer-syntax=*`` (OHIF's
  request) compressed frames go as stored, the part's Content-Type naming their transfer syntax; so they do
  when the stored compressed media type is asked for (``type="image/jp2"``, ``image/jpeg``, ...).
- Bulk data: ``multipart/related; type="application/octet-stream"`` with one part, the value as stored
  (compressed Pixel Data decoded, frame after frame).

Unknown UIDs are 404, malformed UIDs or frame lists 400, an Accept the node cannot satisfy 406.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydicom import encaps, pixels
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from neuronova.dicomweb.deps import get_store
from neuronova.dicomweb.dicomjson import BINARY_VRS, BULK_THRESHOLD, DICOM_JSON, dataset_json, dicomweb_base, raw_vr
from neuronova.errors import InvalidRequest, InvalidUID, NeuroNovaError, NotAcceptable, NotFound
from neuronova.store import InstanceStore, validate_uid

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

CHUNK = 1 << 20
DICOM = "application/dicom"
OCTET = "application/octet-stream"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float
#: The media type of an encapsulated frame, by transfer syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70"), "image/jpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "image/jls"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"), "image/jp2"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"), "image/jpx"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
                    "image/jphc"),
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


# --- Accept --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float = 1.0

    @property
    def part_type(self) -> str:
        """The ``type`` parameter of a multipart range (the media type of its parts)."""
        return _ALIASES.get(self.params.get("type", "").lower(), self.params.get("type", "").lower())


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (order kept among equals); q=0 ranges dropped."""
    ranges: list[MediaRange] = []
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', header or ""):
        pieces = re.findall(r'(?:[^;"]|"[^"]*")+', item)
        if not pieces or not pieces[0].strip():
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(pieces[0].strip().lower(), params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _accepts_multipart(r: MediaRange, part_types: tuple[str, ...]) -> bool:
    if r.type in ("*/*", "multipart/*"):
        return True
    return r.type == "multipart/related" and r.part_type in ("", "*/*", *part_types)


def _check_dicom_accept(request: Request, stored: set[str]) -> None:
    ranges = parse_accept(request.headers.get("accept"))
    if not ranges:
        return
    wanted: set[str] = set()
    for r in ranges:
        if _accepts_multipart(r, (DICOM, "application/*")):
            ts = r.params.get("transfer-syntax")
            if ts in (None, "*"):
                return
            wanted.add(ts)
    if not wanted:
        raise NotAcceptable('WADO-RS answers instances as multipart/related; type="application/dicom"')
    if not stored <= wanted:
        raise NotAcceptable(f"the node does not transcode; stored transfer syntaxes: {', '.join(sorted(stored))} "
                            "(ask with transfer-syntax=* or without the parameter)")


def _check_json_accept(request: Request) -> None:
    ranges = parse_accept(request.headers.get("accept"))
    if ranges and not any(r.type in ("*/*", "application/*", "application/json", DICOM_JSON) for r in ranges):
        raise NotAcceptable("metadata is answered as application/dicom+json only")


# --- lookups -------------------------------------------------------------------------------------------------


def _uid(value: str, name: str) -> str:
    try:
        return validate_uid(value, name=name)
    except InvalidUID as exc:
        raise InvalidRequest(exc.message) from exc


def _instances(store: InstanceStore, study: str, series: str | None = None,
               sop: str | None = None) -> list[sqlite3.Row]:
    _uid(study, "StudyInstanceUID")
    if series is not None:
        _uid(series, "SeriesInstanceUID")
    if sop is not None:
        _uid(sop, "SOPInstanceUID")
    rows = store.index.retrieve_instances(study_uid=study, series_uid=series, sop_uid=sop)
    if not rows:
        what = "instance in this series" if sop else "series in this study" if series else "study"
        raise NotFound(f"no such {what}")
    return rows


def _path(store: InstanceStore, row: sqlite3.Row) -> Path:
    path = store.instances_dir / row["path"]
    if not path.is_file():
        # The index says it is stored: a missing file is the node's fault, not the client's.
        log.error("the file of an indexed instance is missing: %s", row["path"])
        raise NeuroNovaError("the stored file of this instance is missing")
    return path


def _base(request: Request) -> str:
    return dicomweb_base(request, router.prefix)


# --- multipart -----------------------------------------------------------------------------------------------


def _multipart(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    for content_type, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _multipart_response(parts: Iterable[tuple[str, Iterable[bytes]]], part_type: str) -> StreamingResponse:
    boundary = uuid.uuid4().hex
    return StreamingResponse(_multipart(parts, boundary),
                             media_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


def _file_chunks(fp: BinaryIO) -> Iterator[bytes]:
    with fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def _file_parts(store: InstanceStore, rows: list[sqlite3.Row]) -> Iterator[tuple[str, Iterable[bytes]]]:
    for row in rows:
        try:
            fp = open(store.instances_dir / row["path"], "rb")  # noqa: SIM115 - closed by _file_chunks
        except OSError as exc:  # removed since the listing: the response has started, leave it out
            log.error("cannot open stored instance %s: %s", row["path"], type(exc).__name__)
            continue
        yield f"{DICOM}; transfer-syntax={row['transfer_syntax']}", _file_chunks(fp)


def _retrieve(request: Request, store: InstanceStore, rows: list[sqlite3.Row]) -> StreamingResponse:
    _check_dicom_accept(request, {r["transfer_syntax"] for r in rows})
    if len(rows) == 1:
        _path(store, rows[0])
    return _multipart_response(_file_parts(store, rows), DICOM)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(study: str, request: Request, store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _retrieve(request, store, _instances(store, study))


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(study: str, series: str, request: Request,
                    store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _retrieve(request, store, _instances(store, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str, request: Request,
                      store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _retrieve(request, store, _instances(store, study, series, sop))


# --- metadata ------------------------------------------------------------------------------------------------


def _read_deferred(path: Path) -> Dataset:
    # Values above the threshold stay on disk; undefined-length ones (encapsulated pixels) are read.
    return pydicom.dcmread(path, defer_size=BULK_THRESHOLD)


def instance_metadata(path: Path, row: sqlite3.Row, *, base: str) -> dict[str, Any]:
    """The DICOM JSON of one stored instance, top-level bulk data as BulkDataURIs."""
    ds = _read_deferred(path)
    prefix = f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/{row['sop_uid']}/bulkdata/"
    out = dataset_json(ds, bulk_uri=lambda tag: f"{prefix}{tag:08X}")
    out["00083002"] = {"vr": "UI", "Value": [row["transfer_syntax"]]}
    return dict(sorted(out.items()))


def _metadata_array(store: InstanceStore, rows: list[sqlite3.Row], base: str) -> Iterator[bytes]:
    yield b"["
    first = True
    for row in rows:
        try:
            item = instance_metadata(store.instances_dir / row["path"], row, base=base)
        except Exception as exc:  # the response has started: leave the unreadable instance out
            log.error("cannot read metadata of stored instance %s: %s", row["path"], type(exc).__name__)
            continue
        yield (b"" if first else b",") + json.dumps(item, separators=(",", ":")).encode()
        first = False
    yield b"]"


def _metadata(request: Request, store: InstanceStore, rows: list[sqlite3.Row]) -> StreamingResponse:
    _check_json_accept(request)
    if len(rows) == 1:
        _path(store, rows[0])
    return StreamingResponse(_metadata_array(store, rows, _base(request)), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: metadata of a study")
def study_metadata(study: str, request: Request, store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _metadata(request, store, _instances(store, study))


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: metadata of a series")
def series_metadata(study: str, series: str, request: Request,
                    store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _metadata(request, store, _instances(store, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", summary="WADO-RS: metadata of an instance")
def instance_metadata_route(study: str, series: str, sop: str, request: Request,
                            store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    return _metadata(request, store, _instances(store, study, series, sop))


# --- pixel data and bulk data --------------------------------------------------------------------------------


@dataclass
class _Pixels:
    ds: Dataset
    elem: RawDataElement | DataElement
    path: Path
    transfer_syntax: str
    frames: int

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax).is_encapsulated

    def frame_bits(self) -> int:
        ds = self.ds
        bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(int(self.elem.tag), int(ds.BitsAllocated))
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the stored value (deferred: read from the file at the value's offset)."""
        if isinstance(self.elem, RawDataElement) and self.elem.value is None:
            with open(self.path, "rb") as fp:
                fp.seek(self.elem.value_tell + offset)
                return fp.read(length)
        value = self.elem.value
        return bytes(value[offset:offset + length])

    @property
    def length(self) -> int:
        if isinstance(self.elem, RawDataElement):
            return int(self.elem.length)
        return len(self.elem.value)


def _pixels(path: Path, row: sqlite3.Row) -> _Pixels:
    ds = _read_deferred(path)
    for tag in PIXEL_TAGS:
        elem = ds.get_item(tag, keep_deferred=True)
        if elem is not None:
            return _Pixels(ds, elem, path, row["transfer_syntax"], int(ds.get("NumberOfFrames") or 1))
    raise NotFound("this instance has no pixel data")


def _swap(data: bytes, itemsize: int) -> bytes:
    # Explicit VR Big Endian (retired) stores words big-endian; octet-stream parts are little-endian.
    if itemsize <= 1:
        return data
    return np.frombuffer(data, dtype=f">u{itemsize}").astype(f"<u{itemsize}").tobytes()


def _native_frame(px: _Pixels, index: int) -> bytes:
    bits = px.frame_bits()
    if bits % 8 == 0:
        data = px.read(index * bits // 8, bits // 8)
        if px.transfer_syntax == BIG_ENDIAN:
            data = _swap(data, int(px.ds.BitsAllocated) // 8)
        return data
    # 1-bit frames need not start on a byte: cut the bits out and pack them again (LSB first, PS3.5 8.1.1).
    start = index * bits
    raw = np.frombuffer(px.read(start // 8, (start % 8 + bits + 7) // 8), dtype=np.uint8)
    unpacked = np.unpackbits(raw, bitorder="little")[start % 8:start % 8 + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()


def _decoded_frame(px: _Pixels, index: int) -> bytes:
    arr = pixels.pixel_array(px.ds, index=index)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _encapsulated_frame(px: _Pixels, index: int) -> bytes:
    ds = px.ds
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return encaps.get_frame(ds.PixelData, index, extended_offsets=offsets, number_of_frames=px.frames)


@dataclass(frozen=True)
class _FramePlan:
    #: The ``type`` of the multipart response and the Content-Type of each part.
    media: str
    part: str
    #: Compressed frames as stored (True) or decoded (False); native frames are sliced either way.
    as_stored: bool


def _frame_plan(request: Request, transfer_syntax: str) -> _FramePlan:
    """How frames are sent, from the Accept header.

    octet-stream without a transfer syntax (or Explicit VR Little Endian, or any type): native bytes, compressed
    frames decoded. octet-stream with ``transfer-syntax=*`` (what OHIF asks) or the stored one: as stored, the
    part's Content-Type naming the stored transfer syntax so the viewer decodes. The stored compressed media
    type (``image/jp2``, ...): as stored.
    """
    encapsulated = UID(transfer_syntax).is_encapsulated
    native = _FramePlan(OCTET, f"{OCTET}; transfer-syntax={EXPLICIT_VR_LE}", False)
    ranges = parse_accept(request.headers.get("accept"))
    if not ranges:
        return native
    stored = FRAME_MEDIA.get(transfer_syntax) if encapsulated else None
    for r in ranges:
        ts = r.params.get("transfer-syntax")
        if _accepts_multipart(r, (OCTET, "application/*")):
            if ts in (None, EXPLICIT_VR_LE):
                return native
            if ts in ("*", transfer_syntax):
                return _FramePlan(OCTET, f"{OCTET}; transfer-syntax={transfer_syntax}", True) if encapsulated \
                    else native
        if (stored and r.type == "multipart/related" and ts in (None, "*", transfer_syntax)
                and (r.part_type == stored or r.part_type == stored.split("/")[0] + "/*")):
            return _FramePlan(stored, f"{stored}; transfer-syntax={transfer_syntax}", True)
    kinds = "application/octet-stream" + (f" or {stored}" if stored else "")
    raise NotAcceptable(f'frames are answered as multipart/related; type="{kinds}" (stored transfer syntax '
                        f"{transfer_syntax}; the node does not transcode)")


def _parse_frames(frame_list: str, available: int) -> list[int]:
    if not re.fullmatch(r"\d+(,\d+)*", frame_list):
        raise InvalidRequest("a frame list is frame numbers (from 1) separated by commas")
    numbers = [int(n) for n in frame_list.split(",")]
    if any(n < 1 for n in numbers):
        raise InvalidRequest("frame numbers start at 1")
    missing = [n for n in numbers if n > available]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist; the instance has {available} frame(s)")
    return numbers


def _lazy(produce: Callable[[], bytes]) -> Iterator[bytes]:
    yield produce()


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
            summary="WADO-RS: frames of an instance")
def retrieve_frames(study: str, series: str, sop: str, frame_list: str, request: Request,
                    store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    row = _instances(store, study, series, sop)[0]
    px = _pixels(_path(store, row), row)
    numbers = _parse_frames(frame_list, px.frames)
    plan = _frame_plan(request, px.transfer_syntax)
    if not px.encapsulated:
        produce = _native_frame
    else:
        produce = _encapsulated_frame if plan.as_stored else _decoded_frame
    # Each frame is produced when its part is sent, so memory holds one frame at a time.
    parts = ((plan.part, _lazy(lambda i=n - 1: produce(px, i))) for n in numbers)
    return _multipart_response(parts, plan.media)


def _bulk_chunks(px: _Pixels | None, path: Path, elem: RawDataElement | DataElement,
                 itemsize: int, big_endian: bool) -> Iterator[bytes]:
    if px is not None and px.encapsulated:
        for index in range(px.frames):
            yield _decoded_frame(px, index)
        return
    if isinstance(elem, RawDataElement) and elem.value is None:
        with open(path, "rb") as fp:
            fp.seek(elem.value_tell)
            left = int(elem.length)
            while left > 0:
                chunk = fp.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield _swap(chunk, itemsize) if big_endian else chunk
        return
    value = bytes(elem.value)
    yield _swap(value, itemsize) if big_endian else value


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
            summary="WADO-RS: a bulk data value of an instance")
def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request,
                      store: InstanceStore = Depends(get_store)) -> StreamingResponse:
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise InvalidRequest("a bulk data tag is 8 hexadecimal digits (top-level attributes only)")
    row = _instances(store, study, series, sop)[0]
    path = _path(store, row)
    ranges = parse_accept(request.headers.get("accept"))
    if ranges and not any(_accepts_multipart(r, (OCTET, "application/*")) for r in ranges):
        raise NotAcceptable('bulk data is answered as multipart/related; type="application/octet-stream"')
    number = int(tag, 16)
    ds = _read_deferred(path)
    elem = ds.get_item(number, keep_deferred=True)
    vr = raw_vr(elem) if elem is not None else ""
    if elem is None or vr not in BINARY_VRS:
        raise NotFound("no bulk data with this tag in the instance")
    px = (_Pixels(ds, elem, path, row["transfer_syntax"], int(ds.get("NumberOfFrames") or 1))
          if number in PIXEL_TAGS else None)
    itemsize = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}.get(vr, 1)
    chunks = _bulk_chunks(px, path, elem, itemsize, row["transfer_syntax"] == BIG_ENDIAN)
    return _multipart_response([(OCTET, chunks)], OCTET)
