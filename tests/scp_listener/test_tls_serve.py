"""``neuronova serve --tls-cert/--tls-key/--tls-ca``: the node's DIMSE port speaks TLS only, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import storescu
from tests.scp_listener.test_tls import Pki, _files, pki  # noqa: F401  (the module-scoped PKI fixture)

pytestmark = pytest.mark.slow


def test_serve_with_tls_options_stores_over_tls_and_refuses_plaintext(node_factory, pki: Pki,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    node = node_factory("--stable-seconds", "30", "--workers", "0", "--tls-cert", str(pki.server_cert),
                        "--tls-key", str(pki.server_key), "--tls-ca", str(pki.ca), start=False)
    node.start(timeout=120)
    files = _files(tmp_path, 3)
    plain = storescu(node.dimse_port, files)
    assert plain.returncode != 0
    secure = storescu(node.dimse_port, files, extra=["+tls", str(pki.client_key), str(pki.client_cert),
                                                      "+cf", str(pki.ca)])
    assert secure.returncode == 0, secure.stderr
    assert len(list((node.data_dir / "instances").rglob("*.dcm"))) == 3


def test_serve_with_a_missing_certificate_does_not_start(node_factory, pki: Pki) -> None:  # noqa: F811
    node = node_factory("--tls-cert", str(pki.server_cert) + ".missing", "--tls-key", str(pki.server_key),
                        start=False)
    with pytest.raises(RuntimeError, match="node exited"):
        node.start(timeout=120)
    log = next(node.data_dir.parent.glob("node-*.log")).read_text()
    assert "TLS" in log
