"""A corpus of bad and tricky instances, each with the answer the node owes on either path.

Every case is a Part 10 file as bytes: built with pydicom, then (where pydicom would not write the fault)
patched byte for byte, so that what reaches the node is exactly the fault named.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from tests.factory import make_series

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def encode(ds: Dataset, *, transfer_syntax: str | None = None, implementation_uid: str | None = None) -> bytes:
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    if implementation_uid is not None:
        ds.file_meta.ImplementationClassUID = implementation_uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
               little_endian=True)
    return buf.getvalue()


def _patched(ds: Dataset, placeholder: bytes, replacement: bytes) -> bytes:
    """Encode ``ds`` then swap a placeholder value for raw bytes of the same length (no VR rules apply)."""
    data = encode(ds)
    assert data.count(placeholder) == 1 and len(placeholder) == len(replacement)
    return data.replace(placeholder, replacement)


def _one(**attrs: object) -> Dataset:
    ds = make_series(1)[0]
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _pixels(delta: int) -> bytes:
    ds = _one()
    raw = bytes(ds.PixelData)
    ds.PixelData = raw[:delta] if delta < 0 else raw + b"\0" * delta
    data = encode(ds)
    tag = b"\xe0\x7f\x10\x00OW\x00\x00"
    at = data.index(tag) + len(tag)
    written = int.from_bytes(data[at:at + 4], "little")
    if written != len(raw) + delta:  # pydicom padded an odd value: write the odd length itself
        data = data[:at] + (len(raw) + delta).to_bytes(4, "little") + data[at + 4:at + 4 + len(raw) + delta]
    return data


def _rle_bomb() -> bytes:
    ds = _one(Rows=65535, Columns=65535, NumberOfFrames=64)
    ds.PixelData = encapsulate([b"\0" * 64] * 64)
    ds["PixelData"].VR = "OB"
    return encode(ds, transfer_syntax=RLELossless)


def _seg_is_mr() -> bytes:
    ds = _one(SOPClassUID=SEG_CLASS)
    ds.file_meta.MediaStorageSOPClassUID = SEG_CLASS
    return encode(ds)


def _ct_class_mr() -> bytes:
    ds = _one(SOPClassUID=CT_CLASS)
    ds.file_meta.MediaStorageSOPClassUID = CT_CLASS
    return encode(ds)


def _sr_with_pixels() -> bytes:
    ds = _one(SOPClassUID=SR_CLASS, Modality="SR")
    ds.file_meta.MediaStorageSOPClassUID = SR_CLASS
    return encode(ds)


def _no_rows() -> bytes:
    ds = _one()
    del ds.Rows
    return encode(ds)


def _truncated() -> bytes:
    return encode(_one())[:-100]


def _bad_uid() -> bytes:
    ds = _one()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.03.x"
    return encode(ds)


def _text(attr: str, placeholder: str, raw: bytes, **attrs: object) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = _one(**attrs)
        setattr(ds, attr, placeholder)
        return _patched(ds, placeholder.encode(), raw)
    return build


def _over_long() -> bytes:
    return encode(_one(StudyDescription="X" * 80))


def _unknown_charset() -> bytes:
    return encode(_one(SpecificCharacterSet="ISO_IR 999"))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    #: C-STORE status; STOW-RS answers the same code as FailureReason (or WarningReason for 0xB...).
    status: int
    #: The metrics reason (refusals) or warning reason.
    reason: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def refused(self) -> bool:
        return self.status not in (0x0000,) and self.status & 0xF000 != 0xB000


#: Instances refused outright, and those stored with a warning: each is independent of what is stored.
STANDALONE: list[Case] = [
    Case("pixel data 2 bytes short", lambda: _pixels(-2), 0xC212, "pixel_length"),
    Case("pixel data 2 bytes long", lambda: _pixels(2), 0xC212, "pixel_length"),
    Case("pixel data of odd length", lambda: _pixels(1), 0xC212, "pixel_length"),
    Case("rows 0", lambda: encode(_one(Rows=0)), 0xA900, "pixel_module"),
    Case("bits stored > bits allocated", lambda: encode(_one(BitsStored=17, HighBit=16)), 0xA900, "pixel_module"),
    Case("high bit not bits stored - 1", lambda: encode(_one(HighBit=11)), 0xA900, "pixel_module"),
    Case("bits allocated 12", lambda: encode(_one(BitsAllocated=12, BitsStored=12, HighBit=11)), 0xA900,
         "pixel_module"),
    Case("3 samples in MONOCHROME2", lambda: encode(_one(SamplesPerPixel=3, PlanarConfiguration=0)), 0xA900,
         "pixel_module"),
    Case("unknown photometric", lambda: encode(_one(PhotometricInterpretation="GREEN")), 0xA900, "pixel_module"),
    Case("no rows", _no_rows, 0xA900, "pixel_module"),
    Case("number of frames 0", lambda: encode(_one(NumberOfFrames=0)), 0xA900, "pixel_module"),
    Case("RLE declaring 256 GiB decoded", _rle_bomb, 0xA700, "decoded_size"),
    Case("SEG class with MR content", _seg_is_mr, 0xA900, "sop_content"),
    Case("CT class with MR content", _ct_class_mr, 0xA900, "sop_content"),
    Case("SR class with an image", _sr_with_pixels, 0xA900, "sop_content"),
    Case("truncated", _truncated, 0xC210, "invalid"),
    Case("malformed SOP Instance UID", _bad_uid, 0xC211, "uid"),
    # Text that breaks its VR: stored as sent, with a warning.
    Case("backslash in PatientName", _text("PatientName", "Doe^Jane^Roe^X", b"Doe^Jane\\Roe^X"), 0xB007),
    Case("invalid UTF-8", _text("PatientName", "Doe^Jane", b"Doe^J\xff\xfee", SpecificCharacterSet="ISO_IR 192"),
         0xB007),
    Case("non-ASCII in the default repertoire", _text("StudyDescription", "BRAIN", b"BR\xc4IN"), 0xB007),
    Case("control character in LO", _text("StudyDescription", "BRAIN MRI", b"BRAIN\x07MRI"), 0xB007),
    Case("over-long LO", _over_long, 0xB007),
    Case("unknown SpecificCharacterSet", _unknown_charset, 0xB007),
    Case("bad DA", _text("StudyDate", "20260101", b"2026-1-1"), 0xB007),
    # Tricky but valid.
    Case("odd pixel count, padded", lambda: _odd_but_valid(), 0x0000),
]


def _odd_but_valid() -> bytes:
    ds = _one(Rows=3, Columns=3, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    ds.PixelData = bytes(range(9)) + b"\0"
    ds["PixelData"].VR = "OB"
    return encode(ds)


def against(stored: Dataset) -> list[Case]:
    """Cases that conflict with (or repeat) ``stored``, an instance the node holds already."""

    def variant(**attrs: object) -> Callable[[], bytes]:
        def build() -> bytes:
            ds = _one(StudyInstanceUID=stored.StudyInstanceUID, SeriesInstanceUID=stored.SeriesInstanceUID,
                      PatientID=stored.PatientID)
            for key, value in attrs.items():
                setattr(ds, key, value)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            return encode(ds)
        return build

    def same(**meta: str) -> Callable[[], bytes]:
        def build() -> bytes:
            ds = pydicom.dcmread(io.BytesIO(encode(stored)))
            return encode(ds, **meta)
        return build

    return [
        Case("series of another study", variant(StudyInstanceUID=generate_uid()), 0xC213, "identity"),
        Case("another PatientID in the study", variant(PatientID="OTHER-PATIENT"), 0xC213, "identity"),
        Case("another issuer in the study", variant(IssuerOfPatientID="ISSUER-B"), 0x0000),
        Case("same UID, other data set", variant(SOPInstanceUID=stored.SOPInstanceUID, InstanceNumber=99), 0x0111,
             "duplicate"),
        Case("same UID in another series", variant(SOPInstanceUID=stored.SOPInstanceUID,
                                                   SeriesInstanceUID=generate_uid()), 0x0111, "duplicate"),
        Case("same data set, other file meta", same(implementation_uid="1.2.3.4.5"), 0x0000),
        Case("same data set, implicit VR", same(transfer_syntax=ImplicitVRLittleEndian), 0x0000),
        Case("same data set, explicit VR again", same(transfer_syntax=ExplicitVRLittleEndian), 0x0000),
    ]
