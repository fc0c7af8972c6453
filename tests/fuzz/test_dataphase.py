"""Fuzz target: the listener's data phase (scp_listener/dataphase.py) over a real socket pair.

Whatever the peer sends, ``serve`` returns one of its outcomes ("released", "aborted", "closed", "error": the
documented ones; a protocol error is answered by an A-ABORT) and never raises; no temporary file is left."""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterator

import pydicom
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from neuronova.scp_listener.dataphase import (
    A_ABORT,
    A_RELEASE_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    P_DATA_TF,
    TAG_COMMAND,
    TAG_DATASET_TYPE,
    TAG_MSG_ID,
    TAG_SOP_CLASS,
    TAG_SOP_INSTANCE,
    Context,
    DataPhase,
    encode_command,
)
from neuronova.store import InstanceStore
from tests.fuzz.strategies import FUZZ, FUZZ_SLOW, VALID_PART10, chunks, mutated

MR = b"1.2.840.10008.5.1.4.1.1.4"
CONTEXTS = {1: Context(MR.decode(), "1.2.840.10008.1.2.1"), 3: Context("1.2.840.10008.1.1", "1.2.840.10008.1.2")}
OUTCOMES = {"released", "aborted", "closed", "error"}


def _dataset_of(part10: bytes) -> bytes:
    (meta_length,) = struct.unpack_from("<L", part10, 132 + 8)
    return part10[132 + 12 + meta_length:]


DATASET = _dataset_of(VALID_PART10)
SOP_INSTANCE = str(pydicom.dcmread(io.BytesIO(VALID_PART10)).SOPInstanceUID).encode()


def _pad(value: bytes) -> bytes:
    return value + b"\0" if len(value) % 2 else value


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    field = draw(st.sampled_from([C_STORE_RQ, C_ECHO_RQ, 0x0FFF, 0x0020, draw(st.integers(0, 0xFFFF))]))
    elements = [(TAG_SOP_CLASS, _pad(MR)), (TAG_COMMAND, struct.pack("<H", field))]
    if draw(st.integers(0, 9)):  # a command without a Message ID now and then
        elements.append((TAG_MSG_ID, struct.pack("<H", draw(st.integers(0, 0xFFFF)))))
    elements.append((TAG_DATASET_TYPE, struct.pack("<H", draw(st.sampled_from([0x0000, 0x0101, 0x0001])))))
    elements.append((TAG_SOP_INSTANCE, _pad(draw(st.sampled_from([SOP_INSTANCE, b"", b"1..2", b"x" * 80])))))
    keep = draw(st.lists(st.booleans(), min_size=len(elements), max_size=len(elements)))
    return encode_command([e for e, k in zip(elements, keep) if k or draw(st.booleans())])


@st.composite
def pdvs(draw: st.DrawFn) -> bytes:
    context = draw(st.sampled_from([1, 1, 1, 3, draw(st.integers(0, 255))]))
    if draw(st.booleans()):
        value, control = draw(commands()), draw(st.sampled_from([0x03, 0x01, 0x03]))
    else:
        body = draw(st.sampled_from([DATASET, DATASET[:200], b""]))
        value, control = draw(mutated(body, max_mutations=2)), draw(st.sampled_from([0x02, 0x00, 0x02]))
    return struct.pack(">LBB", len(value) + 2, context, control) + value


def _store_command(message_id: int) -> bytes:
    return encode_command([(TAG_SOP_CLASS, _pad(MR)), (TAG_COMMAND, struct.pack("<H", C_STORE_RQ)),
                           (TAG_MSG_ID, struct.pack("<H", message_id)), (TAG_DATASET_TYPE, struct.pack("<H", 0)),
                           (TAG_SOP_INSTANCE, _pad(SOP_INSTANCE))])


@st.composite
def stores(draw: st.DrawFn) -> bytes:
    """A whole C-STORE-RQ (command, then its dataset, intact or slightly damaged), in one or two PDUs."""
    command = _store_command(draw(st.integers(0, 0xFFFF)))
    dataset = draw(st.one_of(st.just(DATASET), mutated(DATASET, max_mutations=1)))
    pdv_c = struct.pack(">LBB", len(command) + 2, 1, 3) + command
    pdv_d = struct.pack(">LBB", len(dataset) + 2, 1, 2) + dataset
    if draw(st.booleans()):
        return struct.pack(">BxL", P_DATA_TF, len(pdv_c) + len(pdv_d)) + pdv_c + pdv_d
    return b"".join(struct.pack(">BxL", P_DATA_TF, len(x)) + x for x in (pdv_c, pdv_d))


@st.composite
def pdus(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["data", "data", "store", "store", "release", "abort", "other"]))
    if kind == "store":
        return draw(stores())
    if kind == "data":
        body = b"".join(draw(st.lists(pdvs(), min_size=1, max_size=3)))
        return struct.pack(">BxL", P_DATA_TF, len(body)) + body
    if kind == "release":
        return struct.pack(">BxLL", A_RELEASE_RQ, 4, 0)
    if kind == "abort":
        return struct.pack(">BxLxxBB", A_ABORT, 4, 0, 0)
    body = draw(st.binary(max_size=16))
    return struct.pack(">BxL", draw(st.integers(0, 255)), len(body)) + body


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = b"".join(draw(st.lists(pdus(), min_size=1, max_size=5)))
    if draw(st.booleans()):
        stream = draw(mutated(stream, max_mutations=3))
    return stream, draw(st.lists(st.integers(0, 1 << 20), max_size=4))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstanceStore]:
    """One store for every example (opening one costs about 0.1 s)."""
    store = InstanceStore(tmp_path_factory.mktemp("fuzz-dataphase"))
    yield store
    store.close()


def _serve(store: InstanceStore, stream: bytes, cuts: list[int]) -> tuple[str, int]:
    ours, peer = socket.socketpair()
    try:
        peer.settimeout(5)
        for chunk in chunks(stream, cuts):
            peer.sendall(chunk)
        peer.shutdown(socket.SHUT_WR)
        phase = DataPhase(ours, store=store, contexts=CONTEXTS, calling_ae="FUZZ", max_pdu=1 << 20, timeout=2.0,
                          implementation_uid="1.2.3", implementation_version="FUZZ")
        outcome = phase.serve()
        assert list((store.root / "tmp").iterdir()) == []
        return outcome, phase.stored
    finally:
        ours.close()
        peer.close()


def test_a_well_formed_store_and_release(store: InstanceStore) -> None:
    command = _store_command(7)
    pdv = struct.pack(">LBB", len(command) + 2, 1, 3) + command
    data = struct.pack(">LBB", len(DATASET) + 2, 1, 2) + DATASET
    stream = b"".join(struct.pack(">BxL", P_DATA_TF, len(x)) + x for x in (pdv, data))
    stream += struct.pack(">BxLL", A_RELEASE_RQ, 4, 0)
    assert _serve(store, stream, []) == ("released", 1)
    assert store.path_of(SOP_INSTANCE.decode()) is not None


@FUZZ_SLOW
@given(streams())
def test_any_pdu_stream(store: InstanceStore, case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    outcome, stored = _serve(store, stream, cuts)
    assert outcome in OUTCOMES
    event(f"outcome {outcome}, {'some' if stored else 'no'} instance stored")


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(store: InstanceStore, stream: bytes) -> None:
    outcome, _ = _serve(store, stream, [])
    assert outcome in OUTCOMES
