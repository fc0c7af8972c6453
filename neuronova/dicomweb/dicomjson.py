"""DICOM JSON (PS3.18 Annex F) for QIDO-RS and WADO-RS: attribute names, element conversion, bulk data.

pydicom does the encoding (``DataElement.to_json_dict``); this module decides which elements are bulk data
and never touches the value of one, so a deferred read (``dcmread(..., defer_size=...)``) stays unread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi import Request
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from neuronova.errors import InvalidRequest

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: Binary values longer than this are bulk data: a BulkDataURI in WADO-RS metadata, left out of QIDO-RS.
BULK_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TAG_HEX = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Attribute:
    tag: int
    #: Empty for private or unknown tags given by number.
    keyword: str
    vr: str

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"


@lru_cache(maxsize=1024)
def resolve_attribute(key: str) -> Attribute:
    """An attribute named in a query by keyword (``PatientID``) or tag (``00100020``); InvalidRequest if neither."""
    if "." in key:
        raise InvalidRequest(f"attribute {key!r}: sequence attribute paths are not supported")
    if _TAG_HEX.fullmatch(key):
        tag = int(key, 16)
        if tag >> 16 == 0x0002:
            raise InvalidRequest(f"attribute {key}: file meta information (group 0002) is not queryable")
        if dictionary_has_tag(tag):
            return Attribute(tag, keyword_for_tag(tag), dictionary_VR(tag))
        return Attribute(tag, "", "UN")
    tag = tag_for_keyword(key)
    if tag is None:
        raise InvalidRequest(f"unknown attribute {key!r}: not a DICOM keyword nor a tag of 8 hexadecimal digits")
    return Attribute(tag, key, dictionary_VR(tag))


def raw_vr(raw: RawDataElement | DataElement) -> str:
    """The VR of an element without reading its value: implicit VR files leave it to the dictionary, where
    "OB or OW" (Pixel Data) and the like are binary, encoded as OW in implicit VR (PS3.5 A.1)."""
    if raw.VR:
        return str(raw.VR)
    if not dictionary_has_tag(raw.tag):
        return "UN"
    vr = dictionary_VR(raw.tag)
    if " or " in vr:
        choices = vr.split(" or ")
        return "OW" if "OW" in choices else "OB" if "OB" in choices else choices[0]
    return vr


def is_bulk(raw: RawDataElement | DataElement, *, threshold: int = BULK_THRESHOLD) -> bool:
    """Whether an element (read or deferred) holds a binary value above ``threshold`` bytes."""
    if raw_vr(raw) not in BINARY_VRS:
        return False
    if isinstance(raw, RawDataElement):
        return raw.value is None or raw.length == 0xFFFFFFFF or raw.length > threshold
    value = raw.value
    if value is None:
        return False
    return bool(getattr(raw, "is_undefined_length", False)) or (
        isinstance(value, (bytes, bytearray)) and len(value) > threshold)


def element_json(elem: DataElement) -> dict[str, Any] | None:
    """One element as DICOM JSON, binary values inline; None (and a DEBUG line) when it cannot be encoded."""
    try:
        return elem.to_json_dict(None, 1 << 62)
    except Exception as exc:  # a malformed stored value must not fail the whole response
        log.debug("cannot encode element %s as DICOM JSON: %s", elem.tag, exc)
        return None


def dataset_json(ds: Dataset, *, bulk_uri: Callable[[BaseTag], str] | None = None,
                 threshold: int = BULK_THRESHOLD, skip: frozenset[int] = frozenset()) -> dict[str, Any]:
    """A dataset's top-level elements as DICOM JSON.

    Top-level bulk data becomes ``{"vr": VR, "BulkDataURI": bulk_uri(tag)}`` or, without ``bulk_uri``, is left
    out; bulk values inside sequences are small in practice (icons) and stay inline. ``skip`` names tags to
    leave out.
    """
    out: dict[str, Any] = {}
    for tag in ds.keys():
        if tag in skip or tag.group == 0x0002:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None:
            continue
        if is_bulk(raw, threshold=threshold):
            if bulk_uri is not None:
                out[f"{tag:08X}"] = {"vr": raw_vr(raw), "BulkDataURI": bulk_uri(tag)}
            continue
        encoded = element_json(ds[tag])
        if encoded is not None:
            out[f"{tag:08X}"] = encoded
    return out


def new_element(vr: str, value: Any) -> dict[str, Any]:
    """DICOM JSON for a value from the index (None or "" gives an empty element, as Type 2 allows).

    Written directly rather than through pydicom: a search answers thousands of these, and the index holds
    only simple values (text, whole numbers, lists of text) that need no VR rules beyond these.
    """
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        name = {key: group for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if group}
        return {"vr": vr, "Value": [name]} if name else {"vr": vr}
    if isinstance(value, (list, tuple)):
        return {"vr": vr, "Value": list(value)}
    if isinstance(value, int):
        return {"vr": vr, "Value": [value]}
    return {"vr": vr, "Value": str(value).split("\\")}


def dicomweb_base(request: Request, prefix: str = "/dicomweb") -> str:
    """The base URL that RetrieveURL and BulkDataURI values start with.

    From the request's Host header, as a reverse proxy presents the node. One exception: dicomweb-client (and
    other clients) send ``Host`` without the port; when the host is the very address the client connected to,
    the port it connected to is added back, so the URLs work when followed.
    """
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[1] and url.hostname == server[0]:
        default = {"http": 80, "https": 443}.get(url.scheme)
        if server[1] != default:
            url = url.replace(port=server[1])
    return str(url).rstrip("/") + prefix
