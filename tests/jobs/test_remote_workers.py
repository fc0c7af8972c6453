"""Workers that share no disk with the node: inputs by WADO-RS, results back over HTTP, claims in Redis.

The node (``serve --workers 0``) and two ``neuronova worker --node-url`` processes, each with its own data
directory, on a real Redis; studies arrive by dcmtk's storescu; the real ``mri_segmentation`` pipeline runs
on the workers. Checked: one result set per study in the node; a worker killed with SIGKILL mid-job leaves
the job to the other worker, still one result set.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from neuronova.phantoms.dicom import make_mr_study, write_series
from neuronova.predict.tasks import task_job_id
from tests.conftest import NodeProcess, storescu
from tests.jobs.helpers import rules_file, wait_for

pytestmark = pytest.mark.slow

HEARTBEAT = "1"


@pytest.fixture
def cluster(tmp_path: Path, node_factory, redis_servers) -> Iterator[tuple[NodeProcess, list[subprocess.Popen[bytes]]]]:
    queue = redis_servers[0]
    queue.flushall()
    rules = rules_file(tmp_path, ("MR", "mri_segmentation"))
    env = {"NEURONOVA_ROUTING_RULES": str(rules), "NEURONOVA_HEARTBEAT_SECONDS": HEARTBEAT}
    node = node_factory("--stable-seconds", "0.5", "--queue-url", queue.url, "--workers", "0", env=env, start=False)
    node.start(timeout=120)
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker(i: int) -> subprocess.Popen[bytes]:
        data = tmp_path / f"worker{i}" / "data"
        data.mkdir(parents=True)
        log = open(tmp_path / f"worker{i}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuronova.cli", "worker", "--node-url", node.url, "--queue-url", queue.url,
             "--data-dir", str(data), "--workers", "1"],
            env={**os.environ, **env, "NEURONOVA_JWT_SECRET": node.secret}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return proc

    workers += [start_worker(0), start_worker(1)]
    yield node, workers
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _study_jobs(node: NodeProcess, study_uid: str) -> list[dict]:
    r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
    if r.status_code != 200:
        return []
    return [job for series in r.json()["series"] for job in series.get("jobs", [])]


def _result_series(node: NodeProcess, study_uid: str) -> dict[str, list[str]]:
    """Series of the study in the node that the node did not receive from the sender: SOP UIDs per series."""
    r = httpx.get(f"{node.url}/dicomweb/studies/{study_uid}/instances", headers=node.headers, timeout=10,
                  params={"includefield": "0020000E"})
    found: dict[str, list[str]] = {}
    for item in r.json():
        found.setdefault(item["0020000E"]["Value"][0], []).append(item["00080018"]["Value"][0])
    return found


def _send(node: NodeProcess, tmp_path: Path, seed: int) -> tuple[str, str]:
    study = make_mr_study(seed, shape=(60, 128, 128))
    files = write_series(study.datasets, tmp_path / f"study{seed}")
    proc = storescu(node.dimse_port, files)
    assert proc.returncode == 0, proc.stderr
    return str(study.datasets[0].StudyInstanceUID), str(study.datasets[0].SeriesInstanceUID)


def _one_result_set(node: NodeProcess, study_uid: str, source_series: str, job: dict) -> None:
    series = _result_series(node, study_uid)
    results = series.copy()
    results.pop(source_series)
    expected: dict[str, list[str]] = {}
    for r in job["results"]:
        expected.setdefault(r["series_instance_uid"], []).append(r["sop_instance_uid"])
    assert expected, "the job wrote no results"
    assert {k: sorted(v) for k, v in results.items()} == {k: sorted(v) for k, v in expected.items()}


def test_remote_workers_run_jobs_over_http_and_survive_a_kill(tmp_path: Path, cluster) -> None:
    node, workers = cluster
    # 1. A study: one worker runs it; its results reach the node; one result set.
    study_uid, series_uid = _send(node, tmp_path, 21)
    job = wait_for(lambda: next((j for j in _study_jobs(node, study_uid) if j["state"] in ("done", "failed")), None),
                   timeout=180, interval=0.2, what="the first job to finish on a remote worker")
    assert job["state"] == "done", job
    assert job["attempts"] == 1
    _one_result_set(node, study_uid, series_uid, job)
    pids = {w.pid for w in workers}
    assert int(job["worker"].split(":")[1]) in pids
    # the worker read its inputs over HTTP into its own data directory (no shared volume)
    worker_dirs = [tmp_path / f"worker{i}" / "data" / "instances" / study_uid / series_uid for i in (0, 1)]
    assert any(d.is_dir() and len(list(d.iterdir())) == 60 for d in worker_dirs)

    # 2. Another study; the worker running it is killed with SIGKILL; the other one finishes it.
    study_uid, series_uid = _send(node, tmp_path, 22)
    running = wait_for(lambda: next((j for j in _study_jobs(node, study_uid)
                                     if j["state"] in ("running", "writing") and j["worker"]), None),
                       timeout=120, interval=0.02, what="the second job to start")
    victim_pid = int(running["worker"].split(":")[1])
    victim = next(w for w in workers if w.pid == victim_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    job = wait_for(lambda: next((j for j in _study_jobs(node, study_uid) if j["state"] in ("done", "failed")), None),
                   timeout=180, interval=0.2, what="the second job to finish on the surviving worker")
    assert job["state"] == "done", job
    assert job["attempts"] == 2 and int(job["worker"].split(":")[1]) != victim_pid
    _one_result_set(node, study_uid, series_uid, job)

    # 3. A predict API task (an upload, not a study): a job on the same queue, run by a remote worker, which
    # fetches the upload from the node and puts the result files back (the node itself runs no worker).
    survivor = next(w for w in workers if w.pid != victim_pid)
    study = make_mr_study(23, shape=(40, 96, 96))
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        for i, ds in enumerate(study.datasets):
            part = io.BytesIO()
            ds.save_as(part, enforce_file_format=True)
            archive.writestr(f"IM{i:04d}", part.getvalue())
    with httpx.Client(base_url=node.url, headers=node.headers, timeout=60) as http:
        created = http.post("/predict/mri_segmentation", files={"image": ("s.zip", upload.getvalue())})
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        body = wait_for(lambda: (b := http.get(created.json()["status_url"]).json())["status"] in
                        ("completed", "failed") and b, timeout=180, interval=0.2, what="the predict task")
        assert body["status"] == "completed", body
        job = http.get(f"/api/v1/jobs/{task_job_id(task_id, 'mri_segmentation')}").json()
        assert int(job["worker"].split(":")[1]) == survivor.pid
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(http.get(body["result"]["mask_url"]).content))
        seg = http.get(body["result"]["seg_url"])
        assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
    labels = np.asarray(mask.dataobj)
    voxel_ml = abs(float(np.linalg.det(mask.affine[:3, :3]))) / 1000
    assert body["result"]["volumes_ml"]["whole tumour"] == pytest.approx((labels > 0).sum() * voxel_ml, abs=1e-3)
    assert (labels > 0).sum() > 0
    assert not (node.data_dir / "predict" / task_id / "input").exists()
    assert not any((tmp_path / f"worker{i}" / "data" / "predict" / task_id).exists() for i in (0, 1))
