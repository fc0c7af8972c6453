"""The listener's own data phase: same files and statuses as pynetdicom's, and the protocol's edge cases."""

from __future__ import annotations

import io
import socket
import struct
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from neuronova.scp_listener import start_listener
from neuronova.scp_listener.dataphase import (
    A_ABORT,
    A_RELEASE_RP,
    C_STORE_RQ,
    Context,
    DataPhase,
    encode_command,
    parse_command,
)
from neuronova.store import InstanceStore
from tests.factory import make_series

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _listener(tmp_path: Path, name: str, *, data_phase: bool, max_pdu: int | None = None):
    store = InstanceStore(tmp_path / name)
    server = start_listener(store, host="127.0.0.1", port=0, ae_title="NEURONOVA", data_phase=data_phase)
    if max_pdu is not None:
        server.ae.maximum_pdu_size = max_pdu  # what the listener offers to each new association
    return store, server


def _send(port: int, datasets, *, echo: bool = False) -> tuple[list[int], bool]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    if echo:
        statuses.append(assoc.send_c_echo().Status)
    assoc.release()
    return statuses, assoc.is_released


@pytest.mark.parametrize("max_pdu", [None, 4096])
def test_data_phase_stores_the_same_bytes_as_pynetdicom(tmp_path: Path, max_pdu: int | None) -> None:
    series = make_series(3)
    stored = {}
    for data_phase in (True, False):
        store, server = _listener(tmp_path, f"dp{data_phase}", data_phase=data_phase, max_pdu=max_pdu)
        try:
            statuses, released = _send(server.server_address[1], series, echo=True)
        finally:
            server.shutdown()
        assert statuses == [0x0000] * 4 and released
        stored[data_phase] = [store.path_of(ds.SOPInstanceUID).read_bytes() for ds in series]
        assert list((store.root / "tmp").iterdir()) == []
        store.close()
    # the file meta and dataset are byte for byte what pynetdicom's handler path writes
    assert stored[True] == stored[False]
    assert pydicom.dcmread(io.BytesIO(stored[True][0])).PixelData == series[0].PixelData


def test_peer_abort_mid_association_keeps_the_listener_serving(tmp_path: Path) -> None:
    store, server = _listener(tmp_path, "n", data_phase=True)
    try:
        port = server.server_address[1]
        first, later = make_series(2)
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
        assert assoc.send_c_store(first).Status == 0x0000
        assoc.abort()
        assert _send(port, [later]) == ([0x0000], True)
    finally:
        server.shutdown()
    assert store.path_of(first.SOPInstanceUID) is not None and store.path_of(later.SOPInstanceUID) is not None
    store.close()


# --- raw PDUs against a DataPhase on a socket pair ----------------------------------------------------------

def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def _p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BxL", 0x04, len(body)) + body


def _store_rq(sop_class: str, sop_instance: str, message_id: int = 7) -> bytes:
    def ui(v: str) -> bytes:
        b = v.encode()
        return b + b"\0" if len(b) % 2 else b
    return encode_command([(0x0002, ui(sop_class)), (0x0100, struct.pack("<H", C_STORE_RQ)),
                           (0x0110, struct.pack("<H", message_id)), (0x0700, struct.pack("<H", 0)),
                           (0x0800, struct.pack("<H", 0x0000)), (0x1000, ui(sop_instance))])


def _dataset_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    return raw[raw.index(b"DICM") + 4 + 12 + struct.unpack_from("<L", raw, raw.index(b"DICM") + 12)[0]:]


class Peer:
    """The requestor's end of a socket pair; the DataPhase serves the other end in a thread."""

    def __init__(self, store: InstanceStore, *, timeout: float = 5, max_pdu: int = 1 << 20) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(5)
        self.phase = DataPhase(theirs, store=store, contexts={1: Context(MR, EXPLICIT)}, calling_ae="PEER",
                               max_pdu=max_pdu, timeout=timeout, implementation_uid="1.2.3",
                               implementation_version="TEST")
        self.outcome: str | None = None
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        self._theirs = theirs

    def _run(self) -> None:
        self.outcome = self.phase.serve()
        self._theirs.close()

    def pdu(self) -> tuple[int, bytes]:
        head = self._recv(6)
        length = struct.unpack_from(">L", head, 2)[0]
        return head[0], self._recv(length)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def status(self) -> int:
        kind, body = self.pdu()
        assert kind == 0x04
        return struct.unpack("<H", parse_command(body[6:])[0x00000900])[0]

    def finish(self) -> str | None:
        self._thread.join(10)
        self.sock.close()
        return self.outcome


def test_raw_store_fragmented_then_release(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    data = _dataset_bytes(ds)
    peer = Peer(store)
    command = _store_rq(ds.SOPClassUID, ds.SOPInstanceUID)
    # the command split over two PDVs, the dataset over three PDUs
    peer.sock.sendall(_p_data(_pdv(1, 0x01, command[:10]), _pdv(1, 0x03, command[10:])))
    thirds = [data[: len(data) // 3], data[len(data) // 3: 2 * len(data) // 3], data[2 * len(data) // 3:]]
    for i, part in enumerate(thirds):
        peer.sock.sendall(_p_data(_pdv(1, 0x02 if i == 2 else 0x00, part)))
    assert peer.status() == 0x0000
    assert pydicom.dcmread(store.path_of(ds.SOPInstanceUID)).PixelData == ds.PixelData
    peer.sock.sendall(struct.pack(">BxLL", 0x05, 4, 0))
    assert peer.pdu()[0] == A_RELEASE_RP
    assert peer.finish() == "released"


def test_raw_sop_class_mismatch_and_missing_dataset_get_statuses(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    peer = Peer(store)
    # the command says CT, the dataset is MR: stored, and the sender is told (0xA900)
    peer.sock.sendall(_p_data(_pdv(1, 0x03, _store_rq("1.2.840.10008.5.1.4.1.1.2", ds.SOPInstanceUID)),
                              _pdv(1, 0x02, _dataset_bytes(ds))))
    assert peer.status() == 0xA900
    # the command's instance UID differs from the dataset's: not stored (0xC210)
    other = make_series(1)[0]
    peer.sock.sendall(_p_data(_pdv(1, 0x03, _store_rq(MR, "1.2.3.4", 8)), _pdv(1, 0x02, _dataset_bytes(other))))
    assert peer.status() == 0xC210
    assert store.path_of(other.SOPInstanceUID) is None
    peer.sock.close()
    assert peer.finish() == "closed"


@pytest.mark.parametrize("pdus", [
    pytest.param([_p_data(_pdv(3, 0x03, _store_rq(MR, "1.2.3")))], id="unknown context"),
    pytest.param([_p_data(_pdv(1, 0x02, b"\0" * 8))], id="dataset without command"),
    pytest.param([_p_data(_pdv(1, 0x03, encode_command([(0x0100, struct.pack("<H", 0x0020)),
                                                        (0x0110, struct.pack("<H", 1))])))], id="C-FIND"),
    pytest.param([struct.pack(">BxL", 0x01, 4) + b"\0" * 4], id="A-ASSOCIATE-RQ in data phase"),
    pytest.param([struct.pack(">BxL", 0x04, 2 << 20)], id="PDU over the maximum"),
    pytest.param([_p_data(_pdv(1, 0x03, b"\0\0\x02"))], id="malformed command"),
])
def test_protocol_errors_abort(tmp_path: Path, pdus: list[bytes]) -> None:
    store = InstanceStore(tmp_path)
    peer = Peer(store)
    for pdu in pdus:
        peer.sock.sendall(pdu)
    kind, body = peer.pdu()
    assert kind == A_ABORT and body[2] == 2  # source: service provider
    assert peer.finish() == "error"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_connection_lost_mid_dataset_leaves_nothing(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    peer = Peer(store)
    data = _dataset_bytes(ds)
    peer.sock.sendall(_p_data(_pdv(1, 0x03, _store_rq(MR, ds.SOPInstanceUID)), _pdv(1, 0x00, data[:100])))
    peer.sock.close()
    assert peer.finish() == "closed"
    assert list((tmp_path / "tmp").iterdir()) == [] and store.path_of(ds.SOPInstanceUID) is None


def test_network_timeout_aborts(tmp_path: Path) -> None:
    peer = Peer(InstanceStore(tmp_path), timeout=0.2)
    kind, _ = peer.pdu()
    assert kind == A_ABORT
    assert peer.finish() == "error"
