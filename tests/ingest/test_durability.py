"""Kill -9 the node while instances arrive: everything acknowledged is there after a restart."""

from __future__ import annotations

import threading

import httpx
import pydicom
from pynetdicom import AE

from tests.factory import make_series


def test_acknowledged_instances_survive_kill_9(node) -> None:
    series = make_series(400)
    acknowledged: list[pydicom.Dataset] = []
    enough = threading.Event()

    def send() -> None:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(series[0].SOPClassUID, series[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="NEURONOVA")
        try:
            for ds in series:
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) != 0x0000:
                    break
                acknowledged.append(ds)
                if len(acknowledged) == 60:
                    enough.set()
        finally:
            enough.set()
            assoc.abort()

    sender = threading.Thread(target=send)
    sender.start()
    assert enough.wait(60)
    node.kill()  # SIGKILL while the association is still sending
    sender.join(30)
    assert 60 <= len(acknowledged) < len(series)

    node.start()
    for ds in acknowledged:
        files = list(node.data_dir.glob(f"instances/*/*/{ds.SOPInstanceUID}.dcm"))
        assert len(files) == 1
        assert pydicom.dcmread(files[0]).PixelData == ds.PixelData
    # the index knows them too: the study has at least every acknowledged instance
    import sqlite3

    db = sqlite3.connect(node.data_dir / "index.sqlite3")
    indexed = {r[0] for r in db.execute("SELECT sop_uid FROM instances")}
    db.close()
    assert {ds.SOPInstanceUID for ds in acknowledged} <= indexed
    assert list((node.data_dir / "tmp").iterdir()) == []
    assert httpx.get(node.url + "/health").json()["status"] == "healthy"
