"""DIMSE event handlers. The C-STORE handler persists and records, nothing more (no inference here).

Handlers are bound with their dependencies, pynetdicom style: ``(evt.EVT_C_STORE, handle_store, [store])``.
An exception in a handler becomes a failure status; it never reaches the association thread.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.events import Event

from neuronova.errors import NeuroNovaError
from neuronova.store import InstanceStore, StoreResult

log = logging.getLogger(__name__)

#: Status codes this handler answers (PS3.4 Annex B.2.3 and PS3.7 C.4.1).
SUCCESS = 0x0000
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def handle_store(event: Event, store: InstanceStore, on_stored: Callable[[StoreResult], None] | None = None) -> int:
    """Store one instance durably, then answer (see ``store_status`` for the statuses)."""
    request = event.request
    return store_status(lambda: store.put(event.encoded_dataset(include_meta=True)),
                        sop_class=request.AffectedSOPClassUID, sop_instance=request.AffectedSOPInstanceUID,
                        calling_ae=event.assoc.requestor.ae_title, on_stored=on_stored)


def store_status(commit: Callable[[], StoreResult], *, sop_class: str, sop_instance: str, calling_ae: str,
                 on_stored: Callable[[StoreResult], None] | None = None) -> int:
    """Run ``commit`` (it stores one instance) and return the C-STORE status to answer.

    Shared by the pynetdicom handler and the listener's own data phase (dataphase.py), so both answer alike.

    Statuses:
      0x0000  stored (fsync'd and indexed), or an identical instance is already held
      0x0111  Duplicate SOP Instance: same UID as a stored instance, different content (policy "reject")
      0xA700  Out of resources: the data directory is full or unwritable; retry later
      0xA900  the dataset's SOP Class or Instance UID differs from the command's
      0xC210  the dataset cannot be understood (truncated, not DICOM, no UIDs)
      0xC211  a UID is malformed (it would name a file)
      0x0110  an unexpected failure (logged with its traceback)
    """
    try:
        result = commit()
        if result.instance.sop_instance_uid != sop_instance or result.instance.sop_class_uid != sop_class:
            # Stored already (it is a valid instance), but the sender's command disagrees: tell it.
            log.warning("C-STORE command UIDs differ from the dataset's for %s", result.instance.sop_instance_uid)
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        if on_stored is not None:
            on_stored(result)
        return SUCCESS
    except NeuroNovaError as exc:
        log.info("C-STORE from %s refused (0x%04X): %s", calling_ae, exc.dicom_status, exc)
        return exc.dicom_status
    except Exception:
        log.exception("C-STORE failed unexpectedly")
        return PROCESSING_FAILURE


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
