"""Optional webhook: a signed JSON event POSTed to the backend when a job ends (done or failed).

Headers: ``X-NeuroNova-Event`` (``job.done`` / ``job.failed``), ``X-NeuroNova-Timestamp`` (epoch seconds) and
``X-NeuroNova-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared secret of ``<timestamp>.<body>``
(the receiver recomputes it over the raw body and rejects old timestamps, which stops replays).

Delivery is best effort and never blocks a worker: events go to a bounded in-memory queue sent by one thread,
each tried a few times with backoff; a node that stops loses what was not yet sent. The status API stays the
source of truth (``GET /api/v1/jobs?since=`` catches up after a missed event).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue as stdlib_queue
import threading
import time
import httpx

from neuronova.config import Settings
from neuronova.errors import ConfigError
from neuronova.jobs.model import Job
from neuronova.jobs.views import job_json
from neuronova.retry import backoff as retry_backoff

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-NeuroNova-Signature"
TIMESTAMP_HEADER = "X-NeuroNova-Timestamp"
EVENT_HEADER = "X-NeuroNova-Event"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, *, timestamp: str, body: bytes, signature: str, max_age: float = 300.0,
           now: float | None = None) -> bool:
    """The receiver's check (also what the tests use)."""
    now = time.time() if now is None else now
    try:
        fresh = abs(now - float(timestamp)) <= max_age
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    def __init__(self, url: str, secret: str, *, attempts: int = 4, timeout: float = 5.0, backoff: float = 0.5,
                 max_queued: int = 10_000, wado_base: str = "/dicomweb") -> None:
        self.url, self.secret, self.wado_base = url, secret, wado_base
        self.attempts, self.timeout, self.backoff = attempts, timeout, backoff
        self._queue: stdlib_queue.Queue[tuple[str, bytes] | None] = stdlib_queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSender | None:
        if not settings.webhook_url:
            return None
        if not settings.webhook_secret:
            raise ConfigError("NEURONOVA_WEBHOOK_SECRET: required when NEURONOVA_WEBHOOK_URL is set "
                              "(events are signed)")
        return cls(settings.webhook_url, settings.webhook_secret)

    def __call__(self, job: Job) -> None:
        """A JobStore end listener: queue the event, return at once."""
        event = f"job.{job.state}"
        body = json.dumps({"event": event, "job": job_json(job, wado_base=self.wado_base)}, separators=(",", ":")).encode()
        try:
            self._queue.put_nowait((event, body))
        except stdlib_queue.Full:
            log.warning("webhook queue full; event for job %s dropped", job.job_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                self._deliver(client, *item)

    def _deliver(self, client: httpx.Client, event: str, body: bytes) -> bool:
        for attempt in range(1, self.attempts + 1):
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", EVENT_HEADER: event, TIMESTAMP_HEADER: stamp,
                       SIGNATURE_HEADER: sign(self.secret, stamp, body)}
            try:
                response = client.post(self.url, content=body, headers=headers)
                if response.status_code < 300:
                    return True
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    log.warning("webhook refused %s with HTTP %d; not retried", event, response.status_code)
                    return False
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < self.attempts and self._stop.wait(retry_backoff(attempt, base=self.backoff)):
                return False
            log.info("webhook %s attempt %d failed (%s)", event, attempt, problem)
        log.warning("webhook %s not delivered after %d attempts", event, self.attempts)
        return False
