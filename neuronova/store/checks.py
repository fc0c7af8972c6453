"""Checks at the door: header arithmetic and content sanity, run on every instance before it is stored.

Nothing here decodes pixels: the checks read the few header values ``scan_part10`` kept (the Image Pixel
module, a few content attributes, the top-level text elements) and the Pixel Data element's length. Written
by hand because no library checks a header against its own pixel arithmetic without decoding it (pydicom
decodes; dciodvfy is a separate program, far too slow for the hot path).

``check_instance`` raises for what the node cannot use (each error carries its DIMSE status and a short
reason) and returns the warnings for text that breaks its VR: such an instance is stored as sent, answered
with a warning status (0xB007), and the warning names the attribute, never its value.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM, keyword_for_tag

from neuronova.errors import DatasetDoesNotMatchSOPClass, DecodedSizeTooLarge, PixelDataMismatch
from neuronova.store.scan import ScannedInstance

#: Warning status for an instance stored as sent although some of its text breaks its VR (PS3.4 B.2.3:
#: "Data Set does not match SOP Class", warning).
TEXT_WARNING_STATUS = 0xB007

#: Samples per pixel each Photometric Interpretation requires (PS3.3 C.7.6.3.1.2).
PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "HSV": 3, "YBR_FULL": 3,
    "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3, "ARGB": 4,
    "CMYK": 4,
}

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
#: SOP classes whose Modality the IOD fixes (PS3.3 C.8.2.1.1.1, C.8.3.1.1.1, ...), among those routed.
REQUIRED_MODALITY = {
    "1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.2.1": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR", "1.2.840.10008.5.1.4.1.1.4.1": "MR", "1.2.840.10008.5.1.4.1.1.4.3": "MR",
    "1.2.840.10008.5.1.4.1.1.128": "PT", SEGMENTATION: "SEG",
}
#: Multi-frame functional-group IODs (Enhanced CT/MR): they must carry their per-frame groups.
ENHANCED = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3"}
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

_SEGMENT_SEQUENCE = 0x00620002
_PER_FRAME_GROUPS = 0x52009230
_PIXEL_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
               "PhotometricInterpretation", "PixelRepresentation")


@dataclass(frozen=True)
class TextWarning:
    """A text element that breaks its VR: the attribute's keyword and the rule (no value: it may be PHI)."""

    keyword: str
    rule: str

    def __str__(self) -> str:
        return f"{self.keyword}: {self.rule}"


FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00008, 0x7FE00009


def _us(scanned: ScannedInstance, name: str) -> int | None:
    raw = scanned.header.get(name)
    if raw is None or len(raw) != 2:
        return None
    return int(struct.unpack("<H" if scanned.little else ">H", raw)[0])


def _cs(scanned: ScannedInstance, name: str) -> str | None:
    raw = scanned.header.get(name)
    return None if raw is None else raw.decode("ascii", errors="replace").strip("\x00 ")


def _refuse(cls: type[Exception], message: str, *, reason: str) -> Exception:
    return cls(message, reason=reason)  # type: ignore[call-arg]


def check_instance(scanned: ScannedInstance, *, max_decoded_bytes: int) -> list[TextWarning]:
    """Refuse (raise) what the node cannot use; return the text warnings of what it stores as sent."""
    _check_content(scanned)
    # Float and Double Float Pixel Data (Parametric Maps) have no BitsStored/HighBit/PixelRepresentation:
    # the integer Image Pixel module's arithmetic applies to Pixel Data (7FE0,0010) only.
    floats = FLOAT_PIXEL_DATA in scanned.tags or DOUBLE_PIXEL_DATA in scanned.tags
    if scanned.pixel is not None or ("Rows" in scanned.header and not floats):
        _check_pixels(scanned, max_decoded_bytes=max_decoded_bytes)
    return text_warnings(scanned)


def _check_content(scanned: ScannedInstance) -> None:
    sop_class = scanned.sop_class_uid
    modality = scanned.attrs.get("Modality", "")
    required = REQUIRED_MODALITY.get(sop_class)
    if required is not None and modality != required:
        raise _refuse(DatasetDoesNotMatchSOPClass,
                      f"SOP Class {sop_class} requires Modality {required}, the dataset has {modality or 'none'}",
                      reason="sop_content")
    if sop_class == SEGMENTATION:
        if _SEGMENT_SEQUENCE not in scanned.tags or not _cs(scanned, "SegmentationType"):
            raise _refuse(DatasetDoesNotMatchSOPClass,
                          "a Segmentation without Segment Sequence or Segmentation Type", reason="sop_content")
        if _us(scanned, "SamplesPerPixel") != 1 or _us(scanned, "BitsAllocated") not in (1, 8):
            raise _refuse(DatasetDoesNotMatchSOPClass, "a Segmentation has 1 sample of 1 or 8 bits per pixel",
                          reason="sop_content")
    elif sop_class in ENHANCED and _PER_FRAME_GROUPS not in scanned.tags:
        raise _refuse(DatasetDoesNotMatchSOPClass, "an Enhanced image without Per-frame Functional Groups",
                      reason="sop_content")
    elif sop_class.startswith(SR_PREFIX):
        if modality != "SR" or _cs(scanned, "ValueType") != "CONTAINER" or scanned.pixel is not None:
            raise _refuse(DatasetDoesNotMatchSOPClass, "a Structured Report needs Modality SR and a CONTAINER "
                          "root, and has no Pixel Data", reason="sop_content")


def _check_pixels(scanned: ScannedInstance, *, max_decoded_bytes: int) -> None:
    missing = [n for n in _PIXEL_TAGS if n not in scanned.header]
    if missing:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Image Pixel module incomplete: no {', '.join(missing)}",
                      reason="pixel_module")
    rows, columns = _us(scanned, "Rows"), _us(scanned, "Columns")
    allocated, stored, high = _us(scanned, "BitsAllocated"), _us(scanned, "BitsStored"), _us(scanned, "HighBit")
    samples, representation = _us(scanned, "SamplesPerPixel"), _us(scanned, "PixelRepresentation")
    if None in (rows, columns, allocated, stored, high, samples, representation):
        raise _refuse(DatasetDoesNotMatchSOPClass, "an Image Pixel module value is not one US value",
                      reason="pixel_module")
    assert rows is not None and columns is not None and allocated is not None and stored is not None
    assert high is not None and samples is not None
    if rows == 0 or columns == 0:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Rows {rows} x Columns {columns}: an image has pixels",
                      reason="pixel_module")
    if allocated == 0 or (allocated != 1 and allocated % 8):
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Bits Allocated {allocated} is neither 1 nor a multiple of 8",
                      reason="pixel_module")
    if not 1 <= stored <= allocated:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Bits Stored {stored} is not within 1..Bits Allocated "
                      f"{allocated}", reason="pixel_module")
    if high != stored - 1:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"High Bit {high} is not Bits Stored {stored} - 1",
                      reason="pixel_module")
    if representation not in (0, 1):
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Pixel Representation {representation} is neither 0 nor 1",
                      reason="pixel_module")
    photometric = _cs(scanned, "PhotometricInterpretation") or ""
    expected_samples = PHOTOMETRIC_SAMPLES.get(photometric)
    if expected_samples is None:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"unknown Photometric Interpretation {photometric[:16]!r}",
                      reason="pixel_module")
    if samples != expected_samples:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Samples per Pixel {samples} with {photometric} (which has "
                      f"{expected_samples})", reason="pixel_module")
    frames = _frames(scanned)
    decoded = (rows * columns * frames * samples * allocated + 7) // 8
    if decoded > max_decoded_bytes:
        raise _refuse(DecodedSizeTooLarge, f"the declared decoded size, {decoded} bytes, is over the limit of "
                      f"{max_decoded_bytes}", reason="decoded_size")
    if scanned.pixel is None:
        return
    length = scanned.pixel.length
    if length is None:  # encapsulated: the declared size above is what decoding would produce
        return
    native = decoded
    if photometric == "YBR_FULL_422":  # two samples per pixel on the wire (PS3.3 C.7.6.3.1.2)
        native = (rows * columns * frames * 2 * allocated + 7) // 8
    if length % 2 or length != native + native % 2:
        raise _refuse(PixelDataMismatch, f"Pixel Data has {length} bytes; Rows x Columns x Samples x Bits x Frames "
                      f"make {native}" + (" (+1 pad byte)" if native % 2 else ""), reason="pixel_length")


def _frames(scanned: ScannedInstance) -> int:
    raw = scanned.header.get("NumberOfFrames")
    if raw is None:
        return 1
    text = raw.decode("ascii", errors="replace").strip("\x00 ")
    if not text:
        return 1
    if not re.fullmatch(r"[+]?[0-9]{1,12}", text) or int(text) < 1:
        raise _refuse(DatasetDoesNotMatchSOPClass, f"Number of Frames {text[:16]!r} is not a positive integer",
                      reason="pixel_module")
    return int(text)


# --- text and its VR ------------------------------------------------------------------------------------------

#: Maximum length of one value (PS3.5 Table 6.2-1): bytes for the fixed-repertoire VRs, characters for the others.
MAX_LENGTH = {b"AE": 16, b"AS": 4, b"CS": 16, b"DA": 8, b"DS": 16, b"DT": 26, b"IS": 12, b"LO": 64, b"LT": 10240,
              b"PN": 64, b"SH": 16, b"ST": 1024, b"TM": 14, b"UI": 64}
#: VRs that hold one value, in which a backslash is text (PS3.5 6.2).
SINGLE_VALUED = {b"LT", b"ST", b"UT", b"UR"}
#: VRs whose text the Specific Character Set governs.
CHARSET_VRS = {b"LO", b"LT", b"PN", b"SH", b"ST", b"UC", b"UT"}
_FORMATS = {
    b"DA": re.compile(r"[0-9]{8}"),
    b"IS": re.compile(r" *[+-]?[0-9]+ *"),
    b"DS": re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *"),
    b"TM": re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)? *"),
    b"UI": re.compile(r"[0-9.]*"),
    b"CS": re.compile(r"[A-Z0-9 _]*"),
    b"AS": re.compile(r"[0-9]{3}[DWMY]"),
}
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # text blocks allow TAB LF FF CR ESC
_LINE_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # the others allow only ESC (ISO 2022)


def text_warnings(scanned: ScannedInstance) -> list[TextWarning]:
    """Every top-level text element that breaks its VR (repertoire, encoding, control characters, length,
    value multiplicity, format), and an unknown Specific Character Set."""
    out: list[TextWarning] = []
    charset_raw = next((raw for tag, _, raw in scanned.texts if tag == 0x00080005), b"")
    terms = [t.strip() or "ISO_IR 6" for t in charset_raw.decode("ascii", errors="replace").strip("\x00 ").split("\\")]
    unknown = [t for t in terms if t not in python_encoding]
    if unknown:
        out.append(TextWarning("SpecificCharacterSet", "unknown character set"))
    # One repertoire without code extensions can be checked strictly; ISO 2022 extensions are left alone.
    encoding = python_encoding.get(terms[0], "ascii") if len(terms) == 1 and not unknown else None
    if encoding == "iso8859":  # pydicom's name for ISO_IR 6 / ISO 646 is ascii in effect
        encoding = "ascii"
    for tag, vr, raw in scanned.texts:
        rule = _text_rule(tag, vr, raw, encoding)
        if rule:
            out.append(TextWarning(keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})", rule))
    return out


@lru_cache(maxsize=8192)
def _text_rule(tag: int, vr: bytes, raw: bytes, encoding: str | None) -> str:
    # Cached: most text values repeat across the instances of a series (names, dates, descriptions, codes).
    if vr in CHARSET_VRS:
        if encoding is None:
            text = raw.decode("latin-1")
        else:
            try:
                text = raw.decode("ascii" if encoding == "ascii" else encoding)
            except (UnicodeDecodeError, LookupError):
                return "bytes invalid in the Specific Character Set"
    else:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return "characters outside the default repertoire"
    text = text.rstrip("\x00 ")  # padding (PS3.5 6.2: space, or NUL for UI; some writers pad text with NUL)
    if (_TEXT_CONTROL if vr in (b"LT", b"ST", b"UT") else _LINE_CONTROL).search(text):
        return "control characters"
    values = [text] if vr in SINGLE_VALUED else text.split("\\")
    if len(values) > 1:
        try:
            vm = dictionary_VM(tag)
        except KeyError:
            vm = ""
        if vm == "1":
            return f"{len(values)} values where one is allowed (backslash)"
    limit = MAX_LENGTH.get(vr)
    pattern = _FORMATS.get(vr)
    for value in values:
        if limit is not None:
            if vr == b"PN":
                if any(len(group) > limit for group in value.split("=")):
                    return f"a component group longer than {limit} characters"
            elif len(value) > limit:
                return f"longer than {limit} characters"
        if pattern is not None and value.strip(" ") and not pattern.fullmatch(value):
            return f"not a valid {vr.decode()} value"
    return ""
