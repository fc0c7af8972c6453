"""Study jobs: one job over the series of a study by role, the missing-role policies, re-opening on a late
series, and the single-series model replaced on the study's inputs (real instance store and job tables)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from neuronova.jobs.model import JobState, StudyInputs
from neuronova.jobs.service import get_study_status, on_study_stable
from neuronova.jobs.store_sqlite import SqliteJobStore
from neuronova.jobs.views import routing_json
from neuronova.phantoms.study import make_study, small_protocol
from neuronova.routing.rules import load_rules, parse_rules
from neuronova.store import InstanceStore
from tests.jobs.helpers import encode

STUDY = "mri_tumour_study"


class Registered:
    """A pipeline as the registry lists it: the service reads its version only."""

    def __init__(self, name: str) -> None:
        self.name, self.version = name, "1"


PIPELINES = {p: Registered(p) for p in (STUDY, "mri_segmentation")}


@pytest.fixture(scope="module")
def phantom() -> dict[str, list[Dataset]]:
    study = make_study(11, protocol=small_protocol(scale=0.4), n_tumours=1)
    return {role: s.datasets for role, s in study.series.items()}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[InstanceStore, SqliteJobStore]]:
    store = InstanceStore(tmp_path / "data")
    jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    yield store, jobs
    jobs.close()
    store.close()


def put(store: InstanceStore, datasets: list[Dataset]) -> None:
    for ds in datasets:
        store.put(encode(ds))


def route(store: InstanceStore, jobs: SqliteJobStore, study: str, generation: int, rules=None,
          sent: list | None = None) -> list:
    sent = [] if sent is None else sent
    return on_study_stable(study, generation, store=store, jobs=jobs, rules=rules or load_rules(),
                           pipelines=PIPELINES, enqueue=lambda job_id, **kw: sent.append((job_id, kw)))


def test_one_job_over_the_four_series_with_their_roles(system, phantom) -> None:
    store, jobs = system
    for datasets in phantom.values():
        put(store, datasets)
    study = phantom["t1c"][0].StudyInstanceUID
    sent: list = []
    started = route(store, jobs, study, 1, sent=sent)
    [job] = [j for j in started if j.pipeline == STUDY]
    inputs = StudyInputs.decode(job.input_fingerprint)
    assert inputs is not None
    assert inputs.by_role == {role: ds[0].SeriesInstanceUID for role, ds in phantom.items()}
    assert [r for r, _ in inputs.roles] == ["t1c", "flair", "t1", "t2"]  # the rule's role order
    assert job.series_uid == phantom["t1c"][0].SeriesInstanceUID  # the reference series
    # the axial T1c would get the single-series model; the study pipeline replaces it on its inputs
    assert [j.pipeline for j in started] == [STUDY] and sent == [(job.job_id, {})]
    status = get_study_status(study, store=store, jobs=jobs)
    roles = {s.series_uid: s.routing.roles for s in status.series if s.routing}
    assert roles[phantom["flair"][0].SeriesInstanceUID] == {STUDY: "flair"}
    shown = {s.series_uid: routing_json(s.routing) for s in status.series}  # what the status API answers
    assert shown[phantom["t1c"][0].SeriesInstanceUID]["roles"] == {STUDY: "t1c"}
    assert "role t2 of mri_tumour_study" in next(s.routing.reason for s in status.series
                                                  if s.series_uid == phantom["t2"][0].SeriesInstanceUID)
    # the same generation again: idempotent
    assert route(store, jobs, study, 1) == []


def test_a_late_series_reopens_the_study_job(system, phantom) -> None:
    store, jobs = system
    for role in ("t1c", "flair", "t1"):
        put(store, phantom[role])
    study = phantom["t1c"][0].StudyInstanceUID
    [first] = route(store, jobs, study, 1)
    assert "t2" not in StudyInputs.decode(first.input_fingerprint).by_role  # missing = "run": runs without it
    put(store, phantom["t2"])
    [again] = route(store, jobs, study, 2)
    assert again.job_id == first.job_id and again.run == 2
    assert StudyInputs.decode(again.input_fingerprint).by_role["t2"] == phantom["t2"][0].SeriesInstanceUID


def test_without_a_required_role_the_single_series_model_runs(system, phantom) -> None:
    store, jobs = system
    put(store, phantom["t1c"])
    study = phantom["t1c"][0].StudyInstanceUID
    started = route(store, jobs, study, 1)
    assert [j.pipeline for j in started] == ["mri_segmentation"]
    [record] = jobs.routing_of_study(study)
    assert record.pipelines == ("mri_segmentation",) and record.roles == {}


POLICY = '''
[[study]]
pipeline = "mri_tumour_study"
roles = ["t1c", "flair"]
required = ["t1c"]
missing = "{missing}"
wait_seconds = {wait}

[[rule]]
name = "agent"
pipeline = "mri_tumour_study"
role = "t1c"
contrast = true

[[rule]]
name = "flair"
pipeline = "mri_tumour_study"
role = "flair"
series_description = "flair"
'''


def test_missing_fail_fails_the_job_with_a_clear_code(system, phantom) -> None:
    store, jobs = system
    put(store, phantom["t1c"])
    study = phantom["t1c"][0].StudyInstanceUID
    sent: list = []
    assert route(store, jobs, study, 1, rules=parse_rules(POLICY.format(missing="fail", wait=0)), sent=sent) == []
    assert sent == []
    [job] = jobs.jobs_of_study(study)
    assert job.state == JobState.FAILED and job.error_code == "SERIES_ROLE_MISSING"
    assert "no series for the role(s) flair" in job.error_message


def test_missing_wait_delays_the_job_until_the_wait_ends_or_the_series_comes(system, phantom) -> None:
    store, jobs = system
    put(store, phantom["t1c"])
    study = phantom["t1c"][0].StudyInstanceUID
    rules = parse_rules(POLICY.format(missing="wait", wait=60))
    sent: list = []
    [job] = route(store, jobs, study, 1, rules=rules, sent=sent)
    job = jobs.get(job.job_id)
    assert job.state == JobState.QUEUED and job.due_at > time.time() + 50
    assert sent and 50 < sent[0][1]["delay"] <= 60 and "waiting until" in job.error_message
    assert jobs.queued_due_before(time.time() + 1) == []  # the reconciler leaves it alone meanwhile
    put(store, phantom["flair"])  # the FLAIR arrives: the study re-opens and the job is due at once
    sent.clear()
    [again] = route(store, jobs, study, 2, rules=rules, sent=sent)
    assert again.job_id == job.job_id and again.due_at <= time.time() and sent == [(job.job_id, {})]
