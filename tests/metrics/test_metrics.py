"""``/metrics`` of a real node: instances in by DIMSE and STOW-RS, one refused, a study routed, the CT
classification job run, its results held back by a destination that is down, then delivered; each step read
back from the scrape."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from neuronova.phantoms.dicom import make_ct_study, write_series
from tests.conftest import DCMTK_ENV, get_port, storescu, wait_for

pytestmark = pytest.mark.slow

PIPELINE = "ct_classification"  # its model is named alike
PATIENT_ID = "NN-METRICS-4711"
PATIENT_NAME = "Sentinel^Metrics"


def scrape(node: Any) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    r = httpx.get(node.url + "/metrics", headers=node.headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The one sample with exactly these labels (0 when absent: a labelled counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def start(node_factory: Callable[..., Any], *args: str, env: dict[str, str] | None = None) -> Any:
    """A node started with time to load and warm up its models on a busy machine."""
    node = node_factory(*args, env=env, start=False)
    node.start(timeout=180)
    return node


wait_for_node = partial(wait_for, interval=0.5)  # polls the node over HTTP: twice a second is enough


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _job(node: Any, study_uid: str) -> dict | None:
    r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
    jobs = r.json().get("jobs", []) if r.status_code == 200 else []
    return next((j for j in jobs if j["pipeline"] == PIPELINE), None)


def test_metrics_follow_ingest_jobs_and_delivery(tmp_path: Path, node_factory) -> None:
    dest_port = get_port()
    destination = f"dimse://DEST@127.0.0.1:{dest_port}"
    node = start(node_factory, "--stable-seconds", "1", "--allowed-ae", "STORESCU", "--destination", destination)
    _, before = scrape(node)
    assert value(before, "neuronova_model_loaded", model=PIPELINE) == 1
    assert value(before, "neuronova_queue_depth", queue="ready") == 0
    assert value(before, "neuronova_metrics_source_up", source="outbox") == 1
    # a configured destination is listed before anything was sent to it
    assert (("neuronova_outbox_backlog", frozenset({("destination", destination), ("state", "pending")}))
            in before)

    study = make_ct_study(4, n_slices=16, matrix=128, tumour_class="Meningioma", patient_id=PATIENT_ID)
    for ds in study.datasets:
        ds.PatientName = PATIENT_NAME
    files = write_series(study.datasets, tmp_path / "ct")
    by_dimse, by_stow = files[:10], files[10:]
    assert storescu(node.dimse_port, by_dimse).returncode == 0
    truncated = by_stow[0].read_bytes()[:-100]  # refused: the pixel data is cut short
    body, ctype = _multipart([p.read_bytes() for p in by_stow] + [truncated])
    r = httpx.post(node.url + "/dicomweb/studies", content=body,
                   headers={**node.headers, "Content-Type": ctype}, timeout=60)
    assert r.status_code == 202, r.text

    study_uid = str(study.datasets[0].StudyInstanceUID)
    sending = wait_for_node(lambda: (j := _job(node, study_uid)) and j["state"] in ("sending", "failed") and j,
                       180, "the job to reach sending")
    assert sending["state"] == "sending", sending["error"]
    results = len(sending["results"])
    assert results == 3  # the SR, the Grad-CAM overlay and the Grad-CAM Parametric Map
    text, mid = wait_for_node(lambda: (s := scrape(node)) and total(s[1], "neuronova_delivery_failures_total") > 0 and s,
                         60, "a failed delivery counted")

    assert value(mid, "neuronova_instances_received_total", path="dimse") == len(by_dimse)
    assert value(mid, "neuronova_instances_received_total", path="stow") == len(by_stow)
    assert total(mid, "neuronova_instances_refused_total", path="stow") == 1
    assert value(mid, "neuronova_studies_stable_total") >= 1
    # the results written into the study re-open it until it is quiet again
    assert value(mid, "neuronova_studies", state="stable") + value(mid, "neuronova_studies", state="receiving") == 1
    assert value(mid, "neuronova_jobs", state="sending") == 1
    assert value(mid, "neuronova_jobs_open", pipeline=PIPELINE, state="sending") == 1
    assert value(mid, "neuronova_outbox_backlog", destination=destination, state="pending") == results
    assert value(mid, "neuronova_outbox_oldest_pending_seconds", destination=destination) > 0
    assert total(mid, "neuronova_delivery_failures_total", destination=destination) >= 1
    assert value(mid, "neuronova_queue_depth", queue="ready") == 0
    # nothing ended yet: no job duration observed
    assert value(mid, "neuronova_job_duration_seconds_count", pipeline=PIPELINE, state="done") == 0

    # the destination comes up: the outbox's next retry delivers, the job is done
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received), str(dest_port)], env=DCMTK_ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = wait_for_node(lambda: (j := _job(node, study_uid)) and j["state"] == "done" and j, 120, "delivery")
    finally:
        scp.terminate()
        scp.wait(10)
    assert len(list(received.iterdir())) == results
    text, end = wait_for_node(lambda: (s := scrape(node)) and value(s[1], "neuronova_studies", state="stable") == 1 and s,
                         30, "the study stable again")
    # two stable generations: the inputs, then the study with the results in it (no new job: inputs unchanged)
    assert value(end, "neuronova_studies_stable_total") == 2
    assert value(end, "neuronova_jobs", state="done") == 1
    assert value(end, "neuronova_jobs_open", pipeline=PIPELINE, state="sending") == 0
    assert value(end, "neuronova_outbox_backlog", destination=destination, state="pending") == 0
    assert value(end, "neuronova_job_duration_seconds_count", pipeline=PIPELINE, state="done") == 1
    took = value(end, "neuronova_job_duration_seconds_sum", pipeline=PIPELINE, state="done")
    assert took == pytest.approx(done["duration_seconds"], abs=0.01)
    assert value(end, "neuronova_inference_duration_seconds_count", model=PIPELINE) == 1
    inference = value(end, "neuronova_inference_duration_seconds_sum", model=PIPELINE)
    assert 0 < inference == pytest.approx(done["summary"]["timings"]["inference_s"], abs=0.001)

    # no patient data, no UID, in any label
    for secret in (PATIENT_ID, PATIENT_NAME, "Sentinel", study_uid, str(study.datasets[0].SeriesInstanceUID)):
        assert secret not in text
    for ds in study.datasets:
        assert ds.SOPInstanceUID not in text


def test_metrics_need_the_token_unless_public(node_factory) -> None:
    node = start(node_factory, "--stable-seconds", "1")
    r = httpx.get(node.url + "/metrics", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert httpx.get(node.url + "/metrics", headers=node.headers, timeout=10).status_code == 200

    public = start(node_factory, "--stable-seconds", "1", env={"NEURONOVA_METRICS_PUBLIC": "true"})
    r = httpx.get(public.url + "/metrics", timeout=10)
    assert r.status_code == 200
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"neuronova_instances_received", "neuronova_jobs", "neuronova_queue_depth", "neuronova_model_loaded",
            "neuronova_job_duration_seconds", "neuronova_inference_duration_seconds"} <= families
    # OpenMetrics when the scraper asks for it
    r = httpx.get(public.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                  timeout=10)
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_an_unreadable_source_leaves_the_scrape_standing(node_factory) -> None:
    node = start(node_factory, "--stable-seconds", "1", "--destination", f"dimse://DEST@127.0.0.1:{get_port()}")
    outbox = node.data_dir / "outbox.sqlite3"
    assert outbox.is_file()
    # the file moved away under the node (its outbox keeps it open) and a directory in its place: opening it
    # fails (garbage in the file would not do: SQLite reads the pages still in the write-ahead log)
    outbox.rename(node.data_dir / "outbox.moved")
    outbox.mkdir()
    _, samples = scrape(node)
    assert value(samples, "neuronova_metrics_source_up", source="outbox") == 0
    assert not any(name == "neuronova_outbox_backlog" for name, _ in samples)
    # every other source still answered
    for source in ("jobs", "queue", "studies", "models"):
        assert value(samples, "neuronova_metrics_source_up", source=source) == 1
    assert ("neuronova_jobs", frozenset({("state", "done")})) in samples
