"""DICOM TLS (PS3.15 B.9, BCP 195) on the listener and the C-STORE sender, against dcmtk's storescu +tls.

Certificates are made here with the openssl command line: a CA, the node's certificate (for 127.0.0.1), a client
certificate from the CA, and one from another CA that the node does not trust."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from neuronova.config import Settings
from neuronova.errors import ConfigError
from neuronova.outbox import OutboxStore, OutboxWorker, parse_destination
from neuronova.outbox.tls import client_context, listener_context, server_context
from neuronova.scp_listener import start_listener
from neuronova.store import InstanceStore
from tests.conftest import get_port, storescu
from tests.factory import make_series


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, ca: str, subject: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={subject}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=NeuroNova test {ca}", cwd=d)
    _issue(d, "server", "ca", "neuronova", san="IP:127.0.0.1,DNS:localhost")
    _issue(d, "client", "ca", "storescu")
    _issue(d, "rogue", "rogue-ca", "intruder")
    return Pki(ca=d / "ca.crt", server_cert=d / "server.crt", server_key=d / "server.key",
               client_cert=d / "client.crt", client_key=d / "client.key", rogue_cert=d / "rogue.crt",
               rogue_key=d / "rogue.key")


@dataclass
class Listener:
    port: int
    store: InstanceStore

    def stored(self) -> int:
        return sum(1 for _ in (self.store.root / "instances").glob("*/*/*.dcm"))


@pytest.fixture(params=[True, False], ids=["dataphase", "pynetdicom"])
def listener(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[Listener]:
    store = InstanceStore(tmp_path / "node")
    port = get_port()
    tls = server_context(cert=pki.server_cert, key=pki.server_key, ca=pki.ca)
    server = start_listener(store, host="127.0.0.1", port=port, ae_title="NEURONOVA", data_phase=request.param,
                            tls=tls)
    yield Listener(port, store)
    server.shutdown()
    store.close()


def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for ds in make_series(n):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


# dcmtk's BCP 195 profiles: non-downgrading (its default), plain, extended
@pytest.mark.parametrize("profile", ["+py", "+px", "+pz"])
def test_storescu_over_tls_stores(listener: Listener, pki: Pki, tmp_path: Path, profile: str) -> None:
    files = _files(tmp_path, 5)
    proc = storescu(listener.port, files, extra=["+tls", str(pki.client_key), str(pki.client_cert),
                                                  "+cf", str(pki.ca), profile])
    assert proc.returncode == 0, proc.stderr
    assert listener.stored() == 5


@pytest.mark.parametrize("how", [
    pytest.param([], id="plaintext"),
    pytest.param(["+tla", "+cf", "{ca}"], id="no-client-certificate"),
    pytest.param(["+tls", "{rogue_key}", "{rogue_cert}", "+cf", "{ca}"], id="untrusted-client-certificate"),
    pytest.param(["+tls", "{client_key}", "{client_cert}", "+cf", "{ca}", "+pa"], id="aes-profile-no-forward-secrecy"),
])
def test_refused(listener: Listener, pki: Pki, tmp_path: Path, how: list[str]) -> None:
    extra = [a.format(**{k: str(v) for k, v in vars(pki).items()}) for a in how]
    proc = storescu(listener.port, _files(tmp_path, 1), extra=extra)
    assert proc.returncode != 0
    assert listener.stored() == 0


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def test_tls_below_1_2_is_refused(listener: Listener, pki: Pki) -> None:
    def client(version: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(pki.ca))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        ctx.minimum_version = ctx.maximum_version = version
        return ctx

    assert _handshake(listener.port, client(ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"  # the control
    with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol"):
        _handshake(listener.port, client(ssl.TLSVersion.TLSv1_1))


def test_a_peer_that_never_handshakes_does_not_block_others(listener: Listener, pki: Pki, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10):  # connects, sends nothing
        ctx = client_context(cert=pki.client_cert, key=pki.client_key, ca=pki.ca)
        assert _handshake(listener.port, ctx).startswith("TLSv1.")


def test_dimses_destination_sends_over_tls(listener: Listener, pki: Pki, tmp_path: Path) -> None:
    """The outbox's C-STORE over TLS: the node's certificate as client certificate, the peer verified."""
    sender_store = InstanceStore(tmp_path / "sender")
    uids = []
    for path in _files(tmp_path, 3):
        uids.append(sender_store.put(path.read_bytes()).instance.sop_instance_uid)
    dest = parse_destination(f"dimses://NEURONOVA@127.0.0.1:{listener.port}")
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=sender_store, destinations=[dest],
                          calling_ae="SENDER", tls=client_context(cert=pki.client_cert, key=pki.client_key, ca=pki.ca))
    worker.enqueue("job", uids)
    worker.run_once()
    assert {r.state for r in worker.outbox.for_job("job")} == {"sent"}
    assert listener.stored() == 3

    # a peer whose certificate the sender cannot verify gets nothing: the rows wait (retry), nothing stored
    other = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox2.sqlite3"), store=sender_store, destinations=[dest],
                         calling_ae="SENDER", tls=client_context(cert=pki.rogue_cert, key=pki.rogue_key,
                                                                 ca=pki.rogue_cert))
    other.enqueue("job2", uids)
    other.run_once()
    assert {(r.state, r.attempts) for r in other.outbox.for_job("job2")} == {("pending", 1)}
    sender_store.close()


def test_tls_settings_errors_name_the_setting(tmp_path: Path, pki: Pki) -> None:
    assert listener_context(Settings(data_dir=tmp_path)) is None
    with pytest.raises(ConfigError, match="NEURONOVA_TLS_CERT"):
        listener_context(Settings(data_dir=tmp_path, tls_ca=pki.ca))
    with pytest.raises(ConfigError, match="NEURONOVA_TLS_CERT"):
        listener_context(Settings(data_dir=tmp_path, tls_cert=pki.server_cert, tls_key=pki.client_key))
    with pytest.raises(ConfigError, match="NEURONOVA_TLS_CA"):
        listener_context(Settings(data_dir=tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key,
                                  tls_ca=tmp_path / "missing.pem"))
    ctx = listener_context(Settings(data_dir=tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key,
                                    tls_ca=pki.ca))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2

