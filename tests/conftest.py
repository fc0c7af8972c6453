"""Shared fixtures: free ports, the node as a real subprocess, dcmtk and dicom3tools helpers."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from pathlib import Path

import httpx
import pytest

from neuronova.api.auth import mint_token

REPO = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # Debian's dcmtk leaves Nagle on otherwise


def get_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storescu(port: int, files: Sequence[Path | str], *, aec: str = "NEURONOVA", aet: str = "STORESCU",
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu; -R proposes only what the files need."""
    cmd = ["storescu", "-R", "-aec", aec, "-aet", aet, *extra, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


def dciodvfy_errors(path: Path | str) -> list[str]:
    """The error lines dciodvfy reports for a file (an empty list means valid)."""
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]



T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition", *,
             interval: float = 0.02) -> T:
    """``check()``'s first true value, polled every ``interval`` seconds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ChildServer:
    """A server the tests run as a child process (``proc``): waiting for its /health, SIGKILL, SIGTERM."""

    proc: subprocess.Popen[bytes] | None
    #: Seconds ``stop`` waits after SIGTERM before SIGKILL.
    stop_seconds = 15.0
    #: What messages call it.
    name = "server"

    def wait_healthy(self, url: str, timeout: float, *, log: Path, interval: float = 0.1) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {log}: "
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(interval)
        raise RuntimeError(f"{self.name} did not answer /health in {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NodeProcess(ChildServer):
    name = "node"
    data_dir: Path
    http_port: int
    dimse_port: int
    secret: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def token(self, sub: str = "tests") -> str:
        return mint_token(self.secret, sub=sub, audience="neuronova", issuer="neuronova")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "NEURONOVA_JWT_SECRET": self.secret, **self.env}
        cmd = [sys.executable, "-m", "neuronova.cli", "serve", "--data-dir", str(self.data_dir),
               "--http-port", str(self.http_port), "--dimse-port", str(self.dimse_port),
               "--dimse-host", "127.0.0.1", *self.extra_args]
        log = self.data_dir.parent / f"node-{self.http_port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.wait_healthy(self.url, timeout, log=log)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[callable]:
    nodes: list[NodeProcess] = []

    def make(*extra_args: str, env: dict[str, str] | None = None, start: bool = True) -> NodeProcess:
        data = tmp_path / f"node{len(nodes)}" / "data"
        data.mkdir(parents=True)
        node = NodeProcess(data_dir=data, http_port=get_port(), dimse_port=get_port(),
                           secret=secrets.token_hex(32), extra_args=list(extra_args), env=env or {})
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    return node_factory("--stable-seconds", "1")


@dataclass
class OrthancProcess:
    """A real Orthanc (Debian package) with its DICOMweb plugin, on free loopback ports."""

    root: Path
    http_port: int
    dicom_port: int
    modalities: dict[str, list[object]] = field(default_factory=dict)
    lua_scripts: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, object]:
        return {
            "Name": "tests", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(self.root / "storage"), "IndexDirectory": str(self.root / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "StableAge": 1, "DicomModalities": self.modalities,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
            "LuaScripts": self.lua_scripts, "HttpTimeout": 30,
        }

    def start(self, timeout: float = 20) -> None:
        import json

        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115
        # Orthanc's DICOM client is dcmtk: without TCP_NODELAY each forwarded instance waits ~40 ms (Nagle)
        self.proc = subprocess.Popen(["/usr/sbin/Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     env=DCMTK_ENV)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def instances(self) -> list[str]:
        return list(httpx.get(self.url + "/instances", timeout=10).json())

    def sop_uids(self) -> set[str]:
        out = set()
        for oid in self.instances():
            out.add(httpx.get(f"{self.url}/instances/{oid}", timeout=10).json()["MainDicomTags"]["SOPInstanceUID"])
        return out


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    server = OrthancProcess(root=tmp_path / "orthanc", http_port=get_port(), dicom_port=get_port())
    server.start()
    yield server
    server.stop()
