"""Worker processes (``python -m neuronova.jobs.worker``) against a real queue: a worker killed with SIGKILL
mid-job, a flushed queue, and two workers sharing one Redis queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuronova.jobs.huey_app import JobQueue
from neuronova.jobs.model import JobState
from neuronova.jobs.reconciler import Reconciler
from neuronova.jobs.service import on_study_stable
from neuronova.jobs.store import JobStore, open_job_store
from neuronova.jobs.worker import build_job_system
from neuronova.pipelines.registry import pipelines as registered
from neuronova.routing.rules import load_rules
from neuronova.store import InstanceStore
from tests.jobs.helpers import REPO, rules_file, settings_for, store_series, wait_for
from tests.jobs.testpipes import TEST_PIPELINES, read_runs


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, data: Path, *, queue_url: str | None, job_store_url: str | None, threads: int = 2,
              ready: bool = True) -> subprocess.Popen[bytes]:
        log_path = self.tmp_path / f"worker{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "neuronova.jobs.worker", "--data-dir", str(data), "--workers", str(threads),
               "--heartbeat-seconds", "0.2", "--pipeline-module", "tests.jobs.testpipes",
               "--job-store-url", job_store_url or "sqlite"]
        if queue_url:
            cmd += ["--queue-url", queue_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEURONOVA_")}
        env["PYTHONPATH"] = str(REPO)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        if ready:
            wait_for(lambda: proc.poll() is not None or "Huey consumer started" in log_path.read_text(),
                     timeout=20, what="the worker to start")
            assert proc.poll() is None, log_path.read_text()
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop_all()


def _urls(backend: str, request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    if backend == "sqlite":
        return None, None
    return request.getfixturevalue("redis_queue").url, request.getfixturevalue("redis_jobs").url


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_job_of_a_killed_worker_completes_exactly_once(backend: str, tmp_path: Path, workers: Workers,
                                                       request: pytest.FixtureRequest) -> None:
    queue_url, jobs_url = _urls(backend, request)
    data = tmp_path / "data"
    store = InstanceStore(data)
    jobs = open_job_store(data_dir=data, url=jobs_url)
    try:
        series = store_series(store, 2)
        study = series[0].StudyInstanceUID
        (data / "testpipes.json").write_text('{"sleep": 1.0}')
        settings = settings_for(data, queue_url=queue_url, routing_rules=rules_file(tmp_path, ("MR", "test_slow_sc")))
        first = workers.start(data, queue_url=queue_url, job_store_url=jobs_url)
        queue = JobQueue.from_settings(settings)
        [job] = on_study_stable(study, 1, store=store, jobs=jobs, rules=load_rules(settings.routing_rules),
                                pipelines={**registered(), **TEST_PIPELINES}, enqueue=queue.enqueue)
        running = wait_for(lambda: (j := jobs.get(job.job_id)).state == JobState.RUNNING and j.progress > 0 and j,
                           what="the job to run and report progress")
        assert f":{first.pid}:" in running.worker
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        second = workers.start(data, queue_url=queue_url, job_store_url=jobs_url, ready=False)
        done = wait_for(lambda: (j := jobs.get(job.job_id)).state in ("done", "failed") and j, timeout=30,
                        what="the job to finish on the second worker")
        assert done.state == JobState.DONE and done.attempts == 2 and f":{second.pid}:" in done.worker
        runs = [(event, pid) for event, job_id, pid in read_runs(data) if job_id == job.job_id]
        assert runs == [("start", first.pid), ("start", second.pid), ("finish", second.pid)]
        [result] = done.result_instances
        # one set of results: the retried run wrote the same instance, replacing it
        assert [r["sop_uid"] for r in store.index.instances_of_series(result.series_uid)] == [result.sop_instance_uid]
        assert sorted(p.name for p in (store.instances_dir / study / result.series_uid).iterdir()) == [
            result.sop_instance_uid + ".dcm"]
    finally:
        jobs.close()
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_flushed_queue_is_rebuilt_from_the_job_table(backend: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    queue_url, jobs_url = _urls(backend, request)
    data = tmp_path / "data"
    store = InstanceStore(data)
    settings = settings_for(data, queue_url=queue_url)
    system = build_job_system(settings, store=store, job_store_url=jobs_url, pipelines=TEST_PIPELINES)
    try:
        ids = []
        for i in range(5):
            job, fresh = system.jobs.ensure_job(study_uid="1.2.3", series_uid=f"1.2.3.{i + 1}", pipeline="test_count",
                                                model_version="t1", input_fingerprint="x")
            assert fresh
            system.enqueue(job.job_id)
            ids.append(job.job_id)
        assert system.queue.pending_job_ids() == set(ids)
        if backend == "redis":
            request.getfixturevalue("redis_queue").flushall()  # the queue's Redis only: the job table is elsewhere
        else:
            system.queue.flush()
        assert system.queue.pending_job_ids() == set()
        assert {j.state for j in system.jobs.list_jobs()} == {JobState.QUEUED}
        reconciler = Reconciler(jobs=system.jobs, enqueue=system.enqueue, pending_job_ids=system.queue.pending_job_ids,
                                max_attempts=3, interval=0.2, grace=0.0)
        assert reconciler.run_once().resent == 5
        assert reconciler.run_once().resent == 0  # the messages are back: nothing is sent twice
        system.start(workers=2, reconcile=False)
        wait_for(lambda: system.jobs.counts()["done"] == 5, what="the rebuilt jobs to run")
        assert Counter(j for e, j, _ in read_runs(data) if e == "start") == Counter(ids)
    finally:
        system.stop()
        store.close()


def _many_jobs(jobs: JobStore, queue: JobQueue, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job, _ = jobs.ensure_job(study_uid="1.2.4", series_uid=f"1.2.4.{i + 1}", pipeline="test_count",
                                 model_version="t1", input_fingerprint="x")
        ids.append(job.job_id)
        queue.enqueue(job.job_id)
        queue.enqueue(job.job_id)  # a duplicate message (a reconciler race): still one run
    return ids


@pytest.mark.slow
def test_two_workers_on_one_redis_never_run_a_job_twice(tmp_path: Path, workers: Workers, redis_queue,
                                                        redis_jobs) -> None:
    data = tmp_path / "data"
    InstanceStore(data).close()
    settings = settings_for(data, queue_url=redis_queue.url)
    one = workers.start(data, queue_url=redis_queue.url, job_store_url=redis_jobs.url)
    two = workers.start(data, queue_url=redis_queue.url, job_store_url=redis_jobs.url)
    jobs = open_job_store(data_dir=data, url=redis_jobs.url)
    try:
        ids = _many_jobs(jobs, JobQueue.from_settings(settings), 80)
        wait_for(lambda: jobs.counts()["done"] == 80, timeout=30, what="80 jobs done")
        time.sleep(0.3)  # let any duplicate message be taken (and refused) before counting
        runs = read_runs(data)
        starts = Counter(j for e, j, _ in runs if e == "start")
        assert starts == Counter(ids)  # each job started exactly once
        assert all(jobs.get(i).attempts == 1 for i in ids)
        assert {pid for _, _, pid in runs} == {one.pid, two.pid}  # both workers took jobs
        assert redis_queue.client().llen("huey.redis.neuronova") == 0
    finally:
        jobs.close()
