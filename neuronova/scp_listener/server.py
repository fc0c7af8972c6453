"""The DIMSE listener: an Application Entity accepting C-ECHO and the storage SOP classes of a brain study."""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

from pydicom import uid as pduid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from neuronova.scp_listener.handlers import handle_store, handlers
from neuronova.scp_listener.dataphase import DataPhase, contexts_of
from neuronova.scp_listener.reactor import EventAssociation, EventAssociationServer
from neuronova.store import InstanceStore, StoreResult
from neuronova.store.watcher import stored_in_transfer

log = logging.getLogger(__name__)

#: The instance is stored as received, never decoded here, so every transfer syntax below is accepted as is;
#: pipelines decode compressed pixel data later (pylibjpeg).
TRANSFER_SYNTAXES = [
    pduid.ExplicitVRLittleEndian,
    pduid.ImplicitVRLittleEndian,
    pduid.ExplicitVRBigEndian,
    pduid.JPEGBaseline8Bit,
    pduid.JPEGExtended12Bit,
    pduid.JPEGLossless,
    pduid.JPEGLosslessSV1,
    pduid.JPEGLSLossless,
    pduid.JPEGLSNearLossless,
    pduid.JPEG2000Lossless,
    pduid.JPEG2000,
    pduid.RLELossless,
]

#: The storage SOP classes of a brain CT/MR study and of the node's own results.
STORAGE_SOP_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage (fusion studies carry it)
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map (the node's own Grad-CAM maps, coming back from a PACS)
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection (IOCM rejection notes)
]

#: Receive large PDUs: fewer, bigger reads (the sender chooses up to this size).
MAX_PDU = 4 * 1024 * 1024


def make_ae(*, ae_title: str, allowed_aes: tuple[str, ...] = ()) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU
    ae.require_calling_aet = list(allowed_aes)
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.maximum_associations = 32
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    return ae


#: Longest a peer may take to complete the TLS handshake.
TLS_HANDSHAKE_TIMEOUT = 10.0


class TlsAssociationServer(EventAssociationServer):
    """The event-driven server with DICOM TLS: the handshake runs in the connection's own thread.

    Why: pynetdicom wraps each accepted socket with the handshake done in ``accept``'s thread, so one peer
    that connects and sends nothing would stall every other connection. A peer that fails the handshake
    (plaintext, TLS below 1.2, no or an untrusted client certificate) is logged and disconnected; it never
    reaches the association layer.
    """

    def get_request(self) -> tuple[Any, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        assert self.ssl_context is not None
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a timeout too
            log.warning("DICOM TLS handshake from %s failed: %s", client_address[0], exc)
            _close(request)
            return
        super().finish_request(request, client_address)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def start_listener(
    store: InstanceStore,
    *,
    host: str,
    port: int,
    ae_title: str,
    allowed_aes: tuple[str, ...] = (),
    on_stored: Callable[[StoreResult], None] | None = None,
    data_phase: bool = True,
    tls: ssl.SSLContext | None = None,
    transfers: Transfers | None = None,
) -> ThreadedAssociationServer:
    """Start listening in background threads; ``server.shutdown()`` stops it.

    pynetdicom negotiates every association; with ``data_phase`` (the default) the listener then serves
    C-STORE and C-ECHO itself (dataphase.py: small instances on tmpfs, one association, about 2500/s against
    370/s through pynetdicom's own data phase), else pynetdicom's service classes call the bound handlers.
    Either way the associations wait on events rather than polling (reactor.py).

    With ``tls`` (``neuronova.outbox.tls.listener_context``) the port speaks DICOM TLS only. The data phase
    works on the TLS socket too: it reads with ``recv_into``, which returns what the TLS layer has already
    decrypted before reading the network (it never waits in ``select``, which would not see those bytes), and
    pynetdicom's negotiation reads no further than the A-ASSOCIATE-RQ PDU.
    """
    ae = make_ae(ae_title=ae_title, allowed_aes=allowed_aes)
    evt_handlers = handlers(store, on_stored)
    if transfers is not None:
        # Each association is a transfer: the study watcher completes its studies a short grace after it ends.
        evt_handlers = [h for h in evt_handlers if h[0] is not evt.EVT_C_STORE] + [
            (evt.EVT_C_STORE, _store_in_transfer, [store, on_stored, transfers]),
            (evt.EVT_CONN_OPEN, lambda event: transfers.transfer_started(id(event.assoc))),
            # the listener's own data phase ends with a release or an abort event; pynetdicom's with the close
            *((e, lambda event: transfers.transfer_ended(id(event.assoc)))
              for e in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)),
        ]
    # AE.start_server(block=False), with the event-driven server class.
    server = ae.make_server((host, port), evt_handlers=evt_handlers, ssl_context=tls,
                            server_class=TlsAssociationServer if tls is not None else EventAssociationServer)
    if data_phase:
        server.data_phase = functools.partial(_data_phase, store=store, on_stored=on_stored, transfers=transfers)
    threading.Thread(target=server.serve_forever, name=f"dimse-listener-{ae_title}", daemon=True).start()
    ae._servers.append(server)
    log.info("DIMSE listener %s on %s:%d%s", ae_title, host, server.server_address[1], " (TLS)" if tls else "")
    return server


class Transfers(Protocol):
    """What the listener tells the study watcher (neuronova.store.watcher.StudyWatcher) per association."""

    def transfer_started(self, key: Hashable) -> None: ...
    def transfer_stored(self, key: Hashable, study_uid: str) -> None: ...
    def transfer_ended(self, key: Hashable, study_uids: Iterable[str] = ()) -> None: ...


def _store_in_transfer(event: evt.Event, store: InstanceStore, on_stored: Callable[[StoreResult], None] | None,
                       transfers: Transfers) -> Any:
    """pynetdicom's own data phase: handle_store, with the association as the transfer."""
    return handle_store(event, store, stored_in_transfer(on_stored, transfers, id(event.assoc)))


def _data_phase(assoc: EventAssociation, *, store: InstanceStore,
                on_stored: Callable[[StoreResult], None] | None, transfers: Transfers | None = None) -> DataPhase:
    on_stored = stored_in_transfer(on_stored, transfers, id(assoc))
    acceptor = assoc.acceptor
    return DataPhase(assoc.dul.socket.socket, store=store, contexts=contexts_of(assoc),
                     calling_ae=assoc.requestor.ae_title, max_pdu=int(acceptor.maximum_length or 0),
                     timeout=assoc.network_timeout, implementation_uid=str(acceptor.implementation_class_uid),
                     implementation_version=str(acceptor.implementation_version_name or ""), on_stored=on_stored)


__all__ = ["STORAGE_SOP_CLASSES", "StoragePresentationContexts", "TRANSFER_SYNTAXES", "make_ae", "start_listener"]
