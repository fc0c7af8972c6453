"""``neuronova worker --metrics-port``: a real worker process serves its own metrics, behind the bearer token."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from neuronova.api.auth import mint_token
from tests.conftest import get_port

pytestmark = pytest.mark.slow  # a worker process imports torch and the model stack before it listens


def test_worker_serves_its_metrics_with_the_token(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    port = get_port()
    env = {**os.environ, "NEURONOVA_JWT_SECRET": secret}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "neuronova.cli", "worker", "--data-dir", str(tmp_path / "data"),
                             "--metrics-port", str(port), "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            try:
                anonymous = httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the worker's metrics port never answered"
                time.sleep(0.2)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["error"]["code"] == "UNAUTHORIZED"
        token = mint_token(secret, sub="prometheus", audience="neuronova", issuer="neuronova")
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert {"neuronova_job_duration_seconds", "neuronova_inference_duration_seconds"} <= set(families)
        assert families["neuronova_job_duration_seconds"].type == "histogram"
        # this process's own metrics: a worker's memory is what one watches on a GPU machine
        rss = [s.value for s in families["process_resident_memory_bytes"].samples]
        assert rss and rss[0] > 10 * 1024 * 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
