"""The status API: real store, real job table, jobs run by the real runner; through TestClient and through
the node's app factory (with its JWT authentication)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from neuronova.api.auth import mint_token
from neuronova.api.errors import install_error_handlers
from neuronova.api.status import router
from neuronova.jobs.runner import JobRunner
from neuronova.jobs.service import on_study_stable
from neuronova.jobs.store_sqlite import SqliteJobStore
from neuronova.pipelines.registry import pipelines
from neuronova.routing.rules import parse_rules
from neuronova.store import InstanceStore
from tests.jobs.helpers import settings_for, store_series
from tests.jobs.testpipes import TEST_PIPELINES

RULES = parse_rules("""
[[rule]]
name = "geometry"
pipeline = "series_geometry"
modality = "MR"

[[rule]]
name = "capture"
pipeline = "test_slow_sc"
modality = "MR"
series_description = "T1"
""")


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = settings_for(tmp_path / "data")
        self.store = InstanceStore(self.settings.data_dir)
        self.jobs = SqliteJobStore(self.settings.data_dir / "jobs.sqlite3")
        self.pipelines = {**pipelines(), **TEST_PIPELINES}
        self.enqueued: list[str] = []
        self.runner = JobRunner(jobs=self.jobs, store=self.store, settings=self.settings, enqueue=self.enqueue,
                                pipelines=self.pipelines)

    def enqueue(self, job_id: str, *, delay: float = 0.0) -> None:
        self.enqueued.append(job_id)

    def run_all(self) -> None:
        while self.enqueued:
            self.runner.run(self.enqueued.pop(0))

    def state(self) -> dict[str, Any]:
        return {"store": self.store, "jobs": self.jobs, "enqueue": self.enqueue, "routing_rules": RULES,
                "pipelines": self.pipelines}

    def study(self, description: str = "AX T1", n: int = 3) -> str:
        series = store_series(self.store, n, series_description=description)
        study = series[0].StudyInstanceUID
        on_study_stable(study, self.store.index.mark_study_stable(study), store=self.store, jobs=self.jobs,
                        rules=RULES, pipelines=self.pipelines, enqueue=self.enqueue)
        return study


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.jobs.close()
    e.store.close()


@pytest.fixture
def client(env: Env) -> Iterator[TestClient]:
    app = FastAPI()
    for key, value in env.state().items():
        setattr(app.state, key, value)
    install_error_handlers(app)
    app.include_router(router)
    with TestClient(app) as c:
        yield c


def test_study_shows_series_routing_jobs_and_results(env: Env, client: TestClient) -> None:
    study = env.study()
    queued = client.get(f"/api/v1/studies/{study}").json()
    assert {j["state"] for j in queued["jobs"]} == {"queued"}
    env.run_all()
    body = client.get(f"/api/v1/studies/{study}").json()
    # the results were stored in the study: it is open again until the watcher sees it quiet
    assert body["study_instance_uid"] == study and body["stable"] is False and body["stable_generation"] == 1
    series, results_series = body["series"]
    assert results_series["routing"]["output_of_job"] is not None and results_series["jobs"] == []
    assert series["modality"] == "MR" and series["instance_count"] == 3
    assert series["routing"]["pipelines"] == ["series_geometry", "test_slow_sc"]
    jobs = {j["pipeline"]: j for j in series["jobs"]}
    assert body["jobs"] == series["jobs"]
    geometry, capture = jobs["series_geometry"], jobs["test_slow_sc"]
    assert geometry["state"] == "done" and geometry["progress"] == 100.0 and geometry["results"] == []
    assert geometry["summary"]["slice_count"] == 3 and geometry["error"] is None
    assert geometry["finished_at"].endswith("Z") and geometry["duration_seconds"] >= 0
    [result] = capture["results"]
    assert result["wado_rs"] == (f"/dicomweb/studies/{study}/series/{result['series_instance_uid']}"
                                 f"/instances/{result['sop_instance_uid']}")
    assert env.store.index.instance(result["sop_instance_uid"]) is not None


def test_job_by_id_and_errors(env: Env, client: TestClient) -> None:
    study = env.study()
    env.run_all()
    job_id = client.get(f"/api/v1/studies/{study}").json()["jobs"][0]["job_id"]
    assert client.get(f"/api/v1/jobs/{job_id}").json()["job_id"] == job_id
    missing = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert client.get("/api/v1/studies/1.2.3.999").status_code == 404
    bad = client.get("/api/v1/studies/not-a-uid")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST"


def test_failed_job_shows_code_message_and_attempts(env: Env, client: TestClient) -> None:
    series = store_series(env.store, 1)
    study = series[0].StudyInstanceUID
    rules = parse_rules('[[rule]]\nname = "bad"\npipeline = "test_bad_series"\n')
    on_study_stable(study, 1, store=env.store, jobs=env.jobs, rules=rules, pipelines=env.pipelines,
                    enqueue=env.enqueue)
    env.run_all()
    [job] = client.get(f"/api/v1/studies/{study}").json()["jobs"]
    assert job["state"] == "failed" and job["attempts"] == 1
    assert job["error"] == {"code": "INVALID_SERIES", "message": "slice 3 is missing"}


def test_list_filters_and_pages(env: Env, client: TestClient) -> None:
    studies = [env.study() for _ in range(3)]  # 6 jobs
    before = dt.datetime.now(dt.UTC)
    env.runner.run(env.enqueued.pop(0))
    page1 = client.get("/api/v1/jobs", params={"limit": 4}).json()
    assert len(page1["jobs"]) == 4 and page1["next_cursor"]
    page2 = client.get("/api/v1/jobs", params={"limit": 4, "cursor": page1["next_cursor"]}).json()
    assert len(page2["jobs"]) == 2 and page2["next_cursor"] is None
    ids = [j["job_id"] for j in page1["jobs"] + page2["jobs"]]
    assert len(set(ids)) == 6
    done = client.get("/api/v1/jobs", params={"state": "done"}).json()["jobs"]
    assert len(done) == 1
    since_iso = client.get("/api/v1/jobs", params={"since": before.isoformat()}).json()["jobs"]
    assert [j["job_id"] for j in since_iso] == [done[0]["job_id"]]
    since_epoch = client.get("/api/v1/jobs", params={"since": str(before.timestamp())}).json()["jobs"]
    assert since_epoch == since_iso
    by_study = client.get("/api/v1/jobs", params={"study_instance_uid": studies[1]}).json()["jobs"]
    assert {j["study_instance_uid"] for j in by_study} == {studies[1]} and len(by_study) == 2
    for params in ({"since": "yesterday"}, {"state": "sleeping"}, {"limit": 0}, {"cursor": "garbage"}):
        r = client.get("/api/v1/jobs", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST", params


def test_reprocess(env: Env, client: TestClient) -> None:
    study = env.study()
    env.run_all()
    r = client.post(f"/api/v1/studies/{study}/reprocess", json={"pipeline": "series_geometry"})
    assert r.status_code == 202
    [job] = r.json()["jobs"]
    assert job["pipeline"] == "series_geometry" and job["state"] == "queued" and job["run"] == 2
    assert env.enqueued == [job["job_id"]]
    env.run_all()
    assert client.get(f"/api/v1/jobs/{job['job_id']}").json()["state"] == "done"
    everything = client.post(f"/api/v1/studies/{study}/reprocess")
    assert everything.status_code == 202 and len(everything.json()["jobs"]) == 2
    unknown = client.post(f"/api/v1/studies/{study}/reprocess", json={"pipeline": "nope"})
    assert unknown.status_code == 400 and "no pipeline named 'nope'" in unknown.json()["error"]["message"]
    assert client.post("/api/v1/studies/1.2.3.999/reprocess").status_code == 404


def test_openapi_describes_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/studies/{study_instance_uid}", "/api/v1/jobs/{job_id}", "/api/v1/jobs",
            "/api/v1/studies/{study_instance_uid}/reprocess"} <= set(spec["paths"])
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert {"state", "progress", "error", "results", "started_at", "finished_at"} <= set(job)


def test_through_the_node_app_with_authentication(env: Env, tmp_path: Path) -> None:
    from neuronova.api.app import create_app

    secret = secrets.token_hex(32)
    settings = env.settings.model_copy(update={"jwt_secret": secret})
    app = create_app(settings=settings, store=env.store, state=env.state())
    study = env.study()
    with TestClient(app) as c:
        assert c.get(f"/api/v1/studies/{study}").status_code == 401
        token = mint_token(secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer)
        r = c.get(f"/api/v1/studies/{study}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and len(r.json()["jobs"]) == 2
