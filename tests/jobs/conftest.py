"""Real Redis servers for the job tests: started once per session on free ports, no persistence, in tmp.

Two servers, because the FLUSHALL test needs the job table to live apart from the queue (see
neuronova.jobs.store_redis: a job table in the queue's Redis is wiped with it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import get_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def flushall(self) -> None:
        with self.client() as c:
            c.flushall()


def _start_redis(directory: Path) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = get_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with server.client() as c:
                if c.ping():
                    return server
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _stop(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    """(queue server, job-table server)."""
    base = tmp_path_factory.mktemp("redis")
    queue_server = _start_redis(base / "queue")
    jobs_server = _start_redis(base / "jobs")
    yield queue_server, jobs_server
    _stop(queue_server)
    _stop(jobs_server)


@pytest.fixture
def redis_queue(redis_servers: tuple[RedisServer, RedisServer]) -> RedisServer:
    """The queue's Redis, empty."""
    redis_servers[0].flushall()
    return redis_servers[0]


@pytest.fixture
def redis_jobs(redis_servers: tuple[RedisServer, RedisServer]) -> RedisServer:
    """The job table's Redis, empty."""
    redis_servers[1].flushall()
    return redis_servers[1]
