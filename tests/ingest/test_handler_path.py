"""The same answers through pynetdicom's own data phase (``data_phase=False``: the bound C-STORE handler)."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from neuronova.scp_listener import start_listener
from neuronova.store import InstanceStore
from tests.conftest import get_port
from tests.ingest.corpus import STANDALONE


def test_handler_answers_statuses_and_error_comments(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    port = get_port()
    server = start_listener(store, host="127.0.0.1", port=port, ae_title="NEURONOVA", data_phase=False)
    cases = [c for c in STANDALONE if c.name in ("pixel data 2 bytes long", "3 samples in MONOCHROME2",
                                                 "over-long LO", "odd pixel count, padded")]
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
        assert assoc.is_established
        for i, case in enumerate(cases):
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(case.build())
            rsp = assoc.send_c_store(path)
            assert rsp.Status == case.status, case.name
            assert bool(rsp.get("ErrorComment")) == (case.status != 0), case.name
        assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        server.shutdown()
        store.close()
    assert len(list(store.instances_dir.rglob("*.dcm"))) == 2  # the warning and the valid one
