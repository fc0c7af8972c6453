"""Queue benchmark: enqueue-to-start latency and throughput of trivial jobs, bare Huey vs the job table.

Usage: ``python bench/queue_latency.py [--quick] [--backends sqlite,redis] [--processes 1,2] [--json FILE]``

For each backend (SqliteHuey in a data directory; RedisHuey on a redis-server started here, the job table on
the same server, as ``--queue-url`` alone configures it) and 1 or 2 worker processes (one consumer thread each):

- ``bare``: a Huey task that records ``time.time()`` minus the enqueue time it was given: Huey alone, with the
  node's consumer settings (JSON messages, SQLite polled from 5 ms backing off to 100 ms, Redis blocking BRPOP);
- ``jobs``: the node's path: ``ensure_job`` (insert into the job table) + enqueue, then in the worker the atomic
  claim (the start: ``started_at - created_at``), a no-op pipeline with its heartbeat thread, and ``done``.

Latency: jobs enqueued one at a time, 10 ms apart, so the queue is idle (p50/p95 of enqueue-to-start).
Throughput: a burst enqueued at once; jobs/s from the first enqueue to the last job's end.
Not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's ``queue`` and Python puts its directory first on sys.path:
# drop it before anything imports ``queue`` (concurrent.futures, logging.handlers, the webhook sender...).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from huey.consumer import Consumer  # noqa: E402

from neuronova.config import Settings  # noqa: E402
from neuronova.jobs.huey_app import JobQueue, make_huey  # noqa: E402
from neuronova.jobs.store import open_job_store  # noqa: E402
from neuronova.jobs.worker import POLL_BACKOFF, POLL_INITIAL_SECONDS, POLL_MAX_SECONDS, run_worker  # noqa: E402
from neuronova.pipelines.registry import PipelineContext, PipelineResult, register  # noqa: E402


class Noop:
    name = "bench_noop"
    version = "0"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        return PipelineResult([], {})


# --- worker processes -------------------------------------------------------------------------------------------

def worker_main(mode: str, data_dir: Path, queue_url: str | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=data_dir, queue_url=queue_url)
    if mode == "jobs":
        register(Noop())
        run_worker(settings, workers=1)
        return
    huey = make_huey(settings)
    out = open(data_dir / f"bare-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    @huey.task(name="bench_task")
    def bench_task(enqueued: float) -> None:
        start = time.time()
        out.write(f"{start - enqueued!r} {time.time()!r}\n")

    Consumer(huey, workers=1, worker_type="thread", periodic=False, initial_delay=POLL_INITIAL_SECONDS,
             backoff=POLL_BACKOFF, max_delay=POLL_MAX_SECONDS, graceful_signal="TERM").run()


@contextmanager
def workers(mode: str, data_dir: Path, queue_url: str | None, n: int) -> Iterator[None]:
    procs, logs = [], []
    for i in range(n):
        log = data_dir / f"worker-{mode}-{i}.out"
        cmd = [sys.executable, __file__, "--worker", mode, "--data-dir", str(data_dir)]
        if queue_url:
            cmd += ["--queue-url", queue_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEURONOVA_")}
        with open(log, "wb") as fp:
            procs.append(subprocess.Popen(cmd, stdout=fp, stderr=subprocess.STDOUT, env=env))
        logs.append(log)
    deadline = time.monotonic() + 60
    while not all("Huey consumer started" in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker did not start: " + " | ".join(log.read_text()[-500:] for log in logs))
        time.sleep(0.05)
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


# --- one measurement ------------------------------------------------------------------------------------------

def _bare(data_dir: Path, queue_url: str | None, n_latency: int, n_burst: int) -> tuple[list[float], float]:
    settings = Settings(data_dir=data_dir, queue_url=queue_url)
    huey = make_huey(settings)

    @huey.task(name="bench_task")
    def bench_task(enqueued: float) -> None:  # the workers run their own copy
        raise AssertionError("enqueue only")

    def lines() -> list[tuple[float, float]]:
        out = []
        for path in data_dir.glob("bare-*.log"):
            out += [tuple(map(float, line.split())) for line in path.read_text().splitlines() if line]
        return out  # type: ignore[return-value]

    for _ in range(n_latency):
        bench_task(time.time())
        time.sleep(0.01)
    _wait(lambda: len(lines()) >= n_latency)
    latencies = [lat for lat, _ in lines()]
    first = time.time()
    for _ in range(n_burst):
        bench_task(time.time())
    _wait(lambda: len(lines()) >= n_latency + n_burst)
    end = max(t for _, t in lines())
    return latencies, n_burst / (end - first)


def _jobs(data_dir: Path, queue_url: str | None, n_latency: int, n_burst: int) -> tuple[list[float], float]:
    settings = Settings(data_dir=data_dir, queue_url=queue_url)
    jobs = open_job_store(data_dir=data_dir, url=queue_url)
    queue = JobQueue.from_settings(settings)

    def submit(i: int) -> str:
        job, _ = jobs.ensure_job(study_uid="1.2.3", series_uid=f"1.2.3.{i}", pipeline="bench_noop",
                                 model_version="0", input_fingerprint="x")
        queue.enqueue(job.job_id)
        return job.job_id

    lat_ids = []
    for i in range(n_latency):
        lat_ids.append(submit(i + 1))
        time.sleep(0.01)
    _wait(lambda: jobs.counts()["done"] >= n_latency)
    latencies = [j.started_at - j.created_at for j in map(jobs.get, lat_ids)]  # type: ignore[operator, union-attr]
    first = time.time()
    burst_ids = [submit(n_latency + i + 1) for i in range(n_burst)]
    _wait(lambda: jobs.counts()["done"] >= n_latency + n_burst)
    end = max(j.finished_at for j in map(jobs.get, burst_ids))  # type: ignore[union-attr, type-var]
    failed = jobs.counts()["failed"]
    jobs.close()
    if failed:
        raise RuntimeError(f"{failed} bench jobs failed")
    return latencies, n_burst / (end - first)


def _wait(check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: _ping(redis, url), timeout=10)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _ping(redis: Any, url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=["bare", "jobs"], help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--queue-url", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="few jobs (a smoke run)")
    p.add_argument("--backends", default="sqlite,redis")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.worker:
        worker_main(args.worker, args.data_dir, args.queue_url)
        return
    n_latency, n_burst = (30, 60) if args.quick else (200, 500)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nn-bench-queue-") as tmp_name:
        tmp = Path(tmp_name)
        with redis_server(tmp) as redis_url:
            import redis

            for backend in args.backends.split(","):
                for n_proc in (int(x) for x in args.processes.split(",")):
                    for mode in ("bare", "jobs"):
                        data = tmp / f"{backend}-{n_proc}-{mode}"
                        data.mkdir()
                        url = redis_url if backend == "redis" else None
                        if url:
                            redis.Redis.from_url(url).flushall()
                        with workers(mode, data, url, n_proc):
                            run = _bare if mode == "bare" else _jobs
                            latencies, rate = run(data, url, n_latency, n_burst)
                        row = {"backend": backend, "processes": n_proc, "mode": mode,
                               "p50_ms": round(1000 * statistics.median(latencies), 2),
                               "p95_ms": round(1000 * _pct(latencies, 95), 2), "jobs_per_s": round(rate, 1)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    print(f"\n{platform.node()} | {os.cpu_count()} CPUs | Python {platform.python_version()} | "
          f"latency n={n_latency} (10 ms apart), burst n={n_burst}\n")
    print("| backend | worker processes | path | start p50 (ms) | start p95 (ms) | jobs/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['processes']} | {r['mode']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['jobs_per_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
