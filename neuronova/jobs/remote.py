"""Workers on other machines: the node reached over HTTP alone (no shared volume).

``neuronova worker --node-url http://node:8000 --queue-url redis://...`` keeps its own data directory as a
cache. For each job it claims (through the shared job store, as every worker does) it

1. reads the job's input series from the node by WADO-RS into its local store (only the instances it does not
   hold yet: a re-run after a late series fetches the new ones);
2. runs the pipeline on the local copies, exactly as a worker on the node's disk would;
3. sends the results to the node (``POST /api/v1/jobs/{job_id}/results``, multipart/related application/dicom as
   STOW-RS sends them, with the job's claim token): the node stores them, in place of an earlier run's, and
   its outbox delivers them to the PACS and marks the job done.

It authenticates with a bearer token it mints from the shared ``NEURONOVA_JWT_SECRET`` (subject
``worker:<host>``), renewed well before it expires.

Why not dicomweb-client: it decodes every instance and re-encodes it (FACTS: raw multipart is 35-50 % faster),
and the worker wants the bytes exactly as the node stored them.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from neuronova.config import Settings
from neuronova.errors import ConfigError, NeuroNovaError
from neuronova.jobs.model import Job, StudyInputs
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
TOKEN_TTL_SECONDS = 3600.0
CLAIM_HEADER = "X-NeuroNova-Claim"
#: Pipelines of the predict API's tasks (neuronova.predict.tasks.PIPELINES).
TASK_PIPELINE_PREFIX = "predict."


class NodeUnavailable(NeuroNovaError):
    """The node did not answer as expected; the job is retried (transient)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="NODE_UNAVAILABLE", http_status=503)


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body (the standard library's MIME parser; bodies here are one job's
    inputs or results, held in memory anyway to be stored)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError(f"not a multipart body: {content_type!r}")
    return [part.get_payload(decode=True) or b"" for part in message.iter_parts()]


def join_multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'{DICOM_MULTIPART}; boundary="{boundary}"'


class RemoteNode:
    """The node seen from a remote worker: input fetch (the runner's ``inputs`` hook) and the results' way back
    (the runner's ``outbox``)."""

    def __init__(self, settings: Settings, *, store: InstanceStore, client: httpx.Client | None = None) -> None:
        if not settings.node_url:
            raise ConfigError("NEURONOVA_NODE_URL (--node-url): a remote worker needs the node's URL")
        if not settings.jwt_secret:
            raise ConfigError("NEURONOVA_JWT_SECRET: a remote worker mints its tokens from the node's shared secret")
        self.settings = settings
        self.store = store
        self.base = settings.node_url.rstrip("/")
        self.client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        self._token: tuple[str, float] | None = None
        self._claims: dict[str, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # --- authentication ---------------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        from neuronova.api.auth import mint_token

        with self._lock:
            now = time.time()
            if self._token is None or self._token[1] - now < TOKEN_TTL_SECONDS / 4:
                s = self.settings
                token = mint_token(s.jwt_secret or "", sub=f"worker:{socket.gethostname()}", ttl_seconds=TOKEN_TTL_SECONDS,
                                   audience=s.jwt_audience, issuer=s.jwt_issuer, now=now)
                self._token = (token, now + TOKEN_TTL_SECONDS)
            return {"Authorization": f"Bearer {self._token[0]}"}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        try:
            response = self.client.request(method, self.base + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise NodeUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise NodeUnavailable(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    # --- inputs -----------------------------------------------------------------------------------------------
    def input_series(self, job: Job) -> list[str]:
        """The series a job reads: each role's series for a study job, else its one series."""
        inputs = StudyInputs.decode(job.input_fingerprint or "")
        if inputs is not None and inputs.roles:
            return list(dict.fromkeys([job.series_uid, *(uid for _, uid in inputs.roles)]))
        return [job.series_uid]

    def fetch_inputs(self, job: Job) -> int:
        """Copy the job's input instances the local store lacks from the node (WADO-RS); return how many."""
        self._claims[job.job_id] = job.claim_token or ""
        if job.pipeline.startswith(TASK_PIPELINE_PREFIX):
            return 0  # a predict task: its pipeline fetches the uploaded files (fetch_task_input)
        fetched = 0
        for series in self.input_series(job):
            fetched += self._fetch_series(job.study_uid, series)
        return fetched

    def _fetch_series(self, study: str, series: str) -> int:
        listing = self._request("GET", f"/dicomweb/studies/{study}/series/{series}/instances",
                                params={"includefield": "00080018"}, headers={"Accept": "application/dicom+json"})
        if listing.status_code == 204 or listing.status_code == 404:
            return 0
        if listing.status_code != 200:
            raise NodeUnavailable(f"QIDO-RS of series: HTTP {listing.status_code}")
        remote = [item["00080018"]["Value"][0] for item in listing.json()]
        local = {row["sop_uid"] for row in self.store.index.instances_of_series(series)}
        missing = [uid for uid in remote if uid not in local]
        if not missing:
            return 0
        if len(missing) == len(remote):  # nothing here yet: the whole series in one request
            return self._store_parts(f"/dicomweb/studies/{study}/series/{series}")
        return sum(self._store_parts(f"/dicomweb/studies/{study}/series/{series}/instances/{uid}") for uid in missing)

    def _store_parts(self, path: str) -> int:
        response = self._request("GET", path, headers={"Accept": DICOM_MULTIPART})
        if response.status_code != 200:
            raise NodeUnavailable(f"WADO-RS {path}: HTTP {response.status_code}")
        parts = split_multipart(response.content, response.headers.get("content-type", ""))
        for part in parts:
            self.store.put(part, replace=True)  # the node's copy is the truth for this cache
        return len(parts)

    # --- predict tasks (neuronova.predict.pipeline; the node's side is neuronova.api.task_files) --------------
    def fetch_task_input(self, job: Job, directory: Path, names: list[str]) -> None:
        """Copy a predict task's uploaded files from the node into ``directory`` (atomically, each)."""
        directory.mkdir(parents=True, exist_ok=True)
        claim = {CLAIM_HEADER: job.claim_token or ""}
        for name in names:
            response = self._request("GET", f"/api/v1/tasks/{job.series_uid}/input/{name}", headers=claim)
            if response.status_code != 200:
                raise NodeUnavailable(f"input {name} of task {job.series_uid}: HTTP {response.status_code} "
                                      f"{response.text[:200]}")
            tmp = directory / f".tmp-{name}"
            tmp.write_bytes(response.content)
            tmp.replace(directory / name)

    def put_task_results(self, job: Job, directory: Path, names: list[str]) -> None:
        """Put a predict task's result files to the node (each replaces the node's file of that name)."""
        claim = {CLAIM_HEADER: job.claim_token or ""}
        for name in names:
            response = self._request("PUT", f"/api/v1/tasks/{job.series_uid}/result/{name}",
                                     content=(directory / name).read_bytes(),
                                     headers={**claim, "Content-Type": "application/octet-stream"})
            if response.status_code != 200:
                # 409: the claim is no longer this worker's (the job was reset or taken over): stop this run.
                raise NodeUnavailable(f"result {name} of task {job.series_uid}: HTTP {response.status_code} "
                                      f"{response.text[:200]}")

    # --- results (the runner's Outbox) -----------------------------------------------------------------------
    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        """Send this run's results to the node, which stores them and queues them for its destinations."""
        parts = [self._read_local(uid) for uid in sop_instance_uids]
        body, content_type = join_multipart(parts)
        response = self._request("POST", f"/api/v1/jobs/{job_id}/results", content=body,
                                 headers={"Content-Type": content_type, CLAIM_HEADER: self._claims.get(job_id, "")})
        if response.status_code != 200:
            # 409: the claim is no longer this worker's (the job was reset or taken over): stop this run.
            raise NodeUnavailable(f"results of job {job_id}: HTTP {response.status_code} {response.text[:200]}")

    def pending(self, job_id: str) -> int:
        response = self._request("GET", f"/api/v1/jobs/{job_id}/results")
        if response.status_code != 200:
            raise NodeUnavailable(f"results of job {job_id}: HTTP {response.status_code}")
        return int(response.json()["pending"])

    def _read_local(self, sop_instance_uid: str) -> bytes:
        path = self.store.path_of(sop_instance_uid)
        if path is None:
            raise NeuroNovaError(f"result {sop_instance_uid} is not in the local store", code="PIPELINE_ERROR")
        return path.read_bytes()

