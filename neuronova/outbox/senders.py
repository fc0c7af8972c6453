"""Send stored result instances to one destination and classify each answer.

Each sender returns, per SOP Instance UID, a ``Delivery``: ``sent`` (acknowledged, possibly with a warning),
``retry`` (a transient failure: out of resources, connection refused, timeout, 5xx) or ``failed`` (refused as
invalid: retrying cannot help).
"""

from __future__ import annotations

import logging
import socket
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pynetdicom import AE, evt
from pynetdicom.events import Event

from neuronova.outbox.destinations import Destination

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    outcome: str  # "sent", "retry" or "failed"
    status: str  # "0x0000", "HTTP 503", "connection refused"...
    error: str = ""


def classify_dimse(status: int) -> str:
    """PS3.4 B.2.3 / PS3.7 C: success and warnings are acknowledged; out of resources is transient."""
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF or status in (0x0107, 0x0116):
        return "sent"
    if status == 0x0111:  # Duplicate SOP Instance: the archive already holds this (deterministic) UID
        return "sent"
    if 0xA700 <= status <= 0xA7FF or status in (0x0213, 0x0210, 0xFE00):
        return "retry"
    return "failed"


def _nodelay(event: Event) -> None:
    # Nagle's algorithm would delay each small C-STORE request by the peer's delayed ACK (~40 ms).
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DimseSender:
    def __init__(self, destination: Destination, *, calling_ae: str, timeout: float = 30,
                 tls: ssl.SSLContext | None = None) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.timeout = timeout
        #: The client context of a ``dimses://`` destination (required for one).
        self.tls = tls

    def send(self, files: Sequence[tuple[str, Path]]) -> dict[str, Delivery]:
        datasets = [(uid, pydicom.dcmread(path)) for uid, path in files]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for _uid, ds in datasets:
            context = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            if context not in {(c.abstract_syntax, c.transfer_syntax[0]) for c in ae.requested_contexts}:
                ae.add_requested_context(*context)
        d = self.destination
        if d.tls and self.tls is None:
            return {uid: Delivery("failed", "no TLS", f"{d.name} needs TLS and the node has no TLS settings "
                                                      "(NEURONOVA_TLS_CA, _CERT, _KEY)") for uid, _ in datasets}
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
                             tls_args=(self.tls, d.host) if d.tls and self.tls is not None else None)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association failed (peer down or unreachable)"
            return {uid: Delivery("retry", "no association", why) for uid, _ in datasets}
        results: dict[str, Delivery] = {}
        try:
            for uid, ds in datasets:
                rsp = assoc.send_c_store(ds)
                status = getattr(rsp, "Status", None)
                if status is None:
                    results[uid] = Delivery("retry", "no response", "connection lost or timed out")
                    if not assoc.is_established:
                        break
                    continue
                outcome = classify_dimse(int(status))
                if outcome == "sent" and status != 0:
                    log.warning("%s acknowledged %s with status 0x%04X", d.name, uid, status)
                results[uid] = Delivery(outcome, f"0x{int(status):04X}",
                                        "" if outcome == "sent" else f"C-STORE status 0x{int(status):04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        for uid, _ in datasets:
            results.setdefault(uid, Delivery("retry", "not sent", "association ended early"))
        return results


class StowSender:
    """STOW-RS with the files as stored (raw multipart: no decode and re-encode of each instance)."""

    def __init__(self, destination: Destination, *, timeout: float = 60) -> None:
        self.destination = destination
        self.timeout = timeout

    def send(self, files: Sequence[tuple[str, Path]]) -> dict[str, Delivery]:
        d = self.destination
        boundary = uuid.uuid4().hex
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        if d.token:
            headers["Authorization"] = f"Bearer {d.token}"
        auth = (d.username, d.password or "") if d.username else None

        def body():
            for _uid, path in files:
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                yield path.read_bytes()
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        uids = [uid for uid, _ in files]
        try:
            r = httpx.post(d.url + "/studies", content=body(), headers=headers, auth=auth, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return {uid: Delivery("retry", "no response", f"{type(exc).__name__}: {exc}") for uid in uids}
        if r.status_code >= 500 or r.status_code in (401, 403, 404, 408, 429):
            return {uid: Delivery("retry", f"HTTP {r.status_code}", r.text[:200]) for uid in uids}
        try:
            js = r.json() if r.content else {}
        except ValueError:
            js = {}
        results: dict[str, Delivery] = {}
        for item in js.get("00081199", {}).get("Value", []):
            uid = item.get("00081155", {}).get("Value", [None])[0]
            results[uid] = Delivery("sent", f"HTTP {r.status_code}")
        for item in js.get("00081198", {}).get("Value", []):
            uid = item.get("00081155", {}).get("Value", [None])[0]
            reason = item.get("00081197", {}).get("Value", [0xC000])[0]
            outcome = "retry" if 0xA700 <= reason <= 0xA7FF else "failed"
            results[uid] = Delivery(outcome, f"HTTP {r.status_code} 0x{reason:04X}", f"FailureReason 0x{reason:04X}")
        for uid in uids:
            if uid not in results:
                # 200 without a per-instance answer: acknowledged; 4xx without one: refused as a whole.
                if r.status_code == 200:
                    results[uid] = Delivery("sent", "HTTP 200")
                else:
                    results[uid] = Delivery("failed", f"HTTP {r.status_code}", r.text[:200])
        return results


def make_sender(destination: Destination, *, calling_ae: str,
                tls: ssl.SSLContext | None = None) -> DimseSender | StowSender:
    if destination.kind == "dimse":
        return DimseSender(destination, calling_ae=calling_ae, tls=tls)
    return StowSender(destination)
