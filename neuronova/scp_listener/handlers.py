"""DIMSE event handlers. The C-STORE handler persists and records, nothing more (no inference here).

Handlers are bound with their dependencies, pynetdicom style: ``(evt.EVT_C_STORE, handle_store, [store])``.
An exception in a handler becomes a failure status; it never reaches the association thread.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from neuronova.errors import NeuroNovaError
from neuronova.metrics import INSTANCES_RECEIVED, INSTANCES_REFUSED, INSTANCES_WARNED
from neuronova.store import InstanceStore, StoreResult
from neuronova.store.checks import TEXT_WARNING_STATUS

log = logging.getLogger(__name__)

#: Status codes this handler answers (PS3.4 Annex B.2.3 and PS3.7 C.4.1).
SUCCESS = 0x0000
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
#: Error Comment (0000,0902) is an LO: at most 64 characters.
COMMENT_LENGTH = 64


@dataclass(frozen=True)
class StoreAnswer:
    """The C-STORE-RSP to send: its status and, for a failure or a warning, the Error Comment."""

    status: int
    comment: str = ""


def handle_store(event: Event, store: InstanceStore,
                 on_stored: Callable[[StoreResult], None] | None = None) -> int | Dataset:
    """Store one instance durably, then answer (see ``store_answer`` for the statuses)."""
    request = event.request
    sop_class, sop_instance = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    answer = store_answer(
        lambda: store.put(event.encoded_dataset(include_meta=True)),
        sop_class=sop_class, sop_instance=sop_instance, calling_ae=event.assoc.requestor.ae_title,
        on_stored=on_stored)
    if not answer.comment:
        return answer.status
    rsp = Dataset()
    rsp.Status, rsp.ErrorComment = answer.status, answer.comment
    return rsp


def store_status(commit: Callable[[], StoreResult], *, sop_class: str, sop_instance: str, calling_ae: str,
                 on_stored: Callable[[StoreResult], None] | None = None) -> int:
    """``store_answer``'s status alone."""
    return store_answer(commit, sop_class=sop_class, sop_instance=sop_instance, calling_ae=calling_ae,
                        on_stored=on_stored).status


def _comment(text: str) -> str:
    """An Error Comment value: ASCII, no backslash or control character, at most 64 characters."""
    clean = "".join(c if " " <= c <= "~" and c != "\\" else " " for c in text)
    return clean[:COMMENT_LENGTH].rstrip()


def store_answer(commit: Callable[[], StoreResult], *, sop_class: str, sop_instance: str, calling_ae: str,
                 on_stored: Callable[[StoreResult], None] | None = None) -> StoreAnswer:
    """Run ``commit`` (it stores one instance) and return the C-STORE answer, counting it in the metrics.

    Shared by the pynetdicom handler and the listener's own data phase (dataphase.py), so both answer alike.
    The file meta of a received instance carries the command's SOP Class and Instance UIDs, so the store
    refuses (0xA900) a dataset whose UIDs differ from the command's before storing it.

    Statuses (failures keep nothing and change nothing stored; each has an Error Comment):
      0x0000  stored (fsync'd and indexed), or the same data set is already held (whatever its file meta)
      0xB007  stored as sent, but some text breaks its VR (Error Comment: the first attribute and the rule)
      0x0111  Duplicate SOP Instance: the UID is stored with another data set (duplicate policy "reject")
      0xA700  Out of resources: the data directory is full or unwritable; retry later; also a declared
              decoded pixel size over the node's limit (a decompression bomb)
      0xA900  Data Set does not match SOP Class: the Image Pixel module contradicts itself (Rows 0, Bits
              Stored > Bits Allocated, Samples per Pixel vs Photometric Interpretation, ...), the content does
              not fit the SOP class (a Segmentation without segments, an MR image's Modality in a CT class),
              or the dataset's SOP Class/Instance UID differs from the command's
      0xC210  the dataset cannot be understood (truncated, not DICOM, no UIDs)
      0xC211  a UID is malformed (it would name a file)
      0xC212  native Pixel Data whose length is not Rows x Columns x Samples x Bits x Frames (even-padded)
      0xC213  identity conflict: the series is in another study, or the patient identity contradicts the
              study's stored instances (identity policy "reject")
      0x0110  an unexpected failure (logged with its traceback)
    """
    try:
        result = commit()
    except NeuroNovaError as exc:
        log.info("C-STORE from %s refused (0x%04X, %s): %s", calling_ae, exc.dicom_status, exc.reason, exc)
        INSTANCES_REFUSED.labels("dimse", exc.reason).inc()
        return StoreAnswer(exc.dicom_status, _comment(exc.message))
    except Exception:
        log.exception("C-STORE failed unexpectedly")
        INSTANCES_REFUSED.labels("dimse", "processing").inc()
        return StoreAnswer(PROCESSING_FAILURE, "processing failure")
    INSTANCES_RECEIVED.labels("dimse").inc()
    if on_stored is not None:
        on_stored(result)
    if result.warnings:
        log.warning("C-STORE from %s stored with a warning: %d text elements break their VR (first: %s)",
                    calling_ae, len(result.warnings), result.warnings[0])
        INSTANCES_WARNED.labels("dimse", "text_vr").inc()
        return StoreAnswer(TEXT_WARNING_STATUS, _comment(f"text breaks its VR: {result.warnings[0]}"))
    return StoreAnswer(SUCCESS)


def handle_echo(event: Event) -> int:
    return SUCCESS


def handle_conn_open(event: Event) -> None:
    """Disable Nagle's algorithm: with it, each small response waits ~40 ms for the peer's delayed ACK."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handlers(store: InstanceStore, on_stored: Callable[[StoreResult], None] | None = None) -> list:
    return [
        (evt.EVT_C_STORE, handle_store, [store, on_stored]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_CONN_OPEN, handle_conn_open),
    ]
