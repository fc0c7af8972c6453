"""A study becomes stable -> jobs -> a real Huey consumer in-process (SqliteHuey, or RedisHuey on a real Redis
with the job table on a second Redis) -> done; retries, permanent failures, re-opened studies, the webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from neuronova.jobs.model import JobState
from neuronova.jobs.service import reprocess
from neuronova.jobs.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from neuronova.jobs.worker import JobSystem, build_job_system
from neuronova.pipelines.registry import pipelines as registered
from neuronova.routing.rules import load_rules, parse_rules
from neuronova.store import InstanceStore
from tests.jobs.helpers import rules_file, settings_for, store_series, wait_for
from tests.jobs.testpipes import TEST_PIPELINES, read_runs

SECRET = "webhook-secret-for-tests"


@pytest.fixture(params=["sqlite", "redis"])
def make_system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., JobSystem]]:
    systems: list[JobSystem] = []
    stores: list[InstanceStore] = []

    def make(*rules: tuple[str, str], workers: int = 1, outbox: Any = None, **overrides: Any) -> JobSystem:
        job_store_url = None
        if request.param == "redis":
            queue, jobs = request.getfixturevalue("redis_queue"), request.getfixturevalue("redis_jobs")
            overrides.setdefault("queue_url", queue.url)
            job_store_url = jobs.url
        data = tmp_path / "data"
        settings = settings_for(data, routing_rules=rules_file(tmp_path, *rules), **overrides)
        store = InstanceStore(data)
        stores.append(store)
        system = build_job_system(settings, store=store, job_store_url=job_store_url, outbox=outbox,
                                  pipelines={**registered(), **TEST_PIPELINES}, retry_backoff=0.05)
        system.start(workers=workers)
        systems.append(system)
        return system

    make.backend = request.param  # type: ignore[attr-defined]
    yield make
    for system in systems:
        system.stop()
    for store in stores:
        store.close()


def _stable(system: JobSystem, study_uid: str) -> list[Any]:
    generation = system.store.index.mark_study_stable(study_uid)
    assert generation is not None
    return system.on_study_stable(study_uid, generation)


def _final(system: JobSystem, job_id: str, timeout: float = 10.0):
    return wait_for(lambda: (j := system.jobs.get(job_id)) is not None and j.state in ("done", "failed") and j,
                    timeout=timeout, what=f"job {job_id} to end")


def test_geometry_job_runs_to_done(make_system) -> None:
    system = make_system(("MR", "series_geometry"))
    series = store_series(system.store, 4)
    study = series[0].StudyInstanceUID
    _stable(system, study)
    [job] = system.jobs.jobs_of_study(study)
    done = _final(system, job.job_id)
    assert done.state == JobState.DONE and done.attempts == 1 and done.progress == 100.0
    assert done.result_instances == ()  # the geometry pipeline writes no DICOM: it is not a model
    s = done.summary
    assert s["orientation"] == "axial" and s["slice_count"] == 4 and s["slice_spacing_mm"] == 5.0
    assert s["rows"] == 64 and s["columns"] == 64 and s["slice_spacing_uniform"] is True
    assert s["extent_mm"][2] == 20.0
    assert done.started_at >= done.created_at and done.finished_at >= done.started_at
    [routing] = system.jobs.routing_of_study(study)
    assert routing.pipelines == ("series_geometry",) and routing.reason.startswith("matched")


def test_redelivery_is_idempotent_and_reopened_study_reruns_only_changed_series(make_system) -> None:
    system = make_system(("MR", "series_geometry"))
    a = store_series(system.store, 3)
    study = a[0].StudyInstanceUID
    b = store_series(system.store, 3, study_uid=study, series_description="AX FLAIR")
    _stable(system, study)
    jobs = {j.series_uid: j for j in system.jobs.jobs_of_study(study)}
    assert len(jobs) == 2
    for j in jobs.values():
        _final(system, j.job_id)
    # the watcher re-delivers the same generation after a crash: nothing new
    assert system.on_study_stable(study, 1) == []
    assert all(j.run == 1 for j in system.jobs.jobs_of_study(study))
    # a late instance in series b re-opens the study: only b's job runs again
    late = store_series(system.store, 1, study_uid=study, series_uid=b[0].SeriesInstanceUID)
    assert late[0].SeriesInstanceUID == b[0].SeriesInstanceUID
    _stable(system, study)
    after = {j.series_uid: j for j in system.jobs.jobs_of_study(study)}
    assert after[a[0].SeriesInstanceUID].run == 1
    assert after[b[0].SeriesInstanceUID].run == 2
    rerun = _final(system, after[b[0].SeriesInstanceUID].job_id)
    assert rerun.state == JobState.DONE and rerun.summary["slice_count"] == 4


def test_study_watcher_drives_the_jobs(make_system) -> None:
    from neuronova.store.watcher import StudyWatcher

    system = make_system(("MR", "series_geometry"))
    watcher = StudyWatcher(system.store.index, stable_seconds=0.0)
    watcher.subscribe(system.on_study_stable)
    series = store_series(system.store, 2)
    study = series[0].StudyInstanceUID
    assert watcher.check_once() == [(study, 1)]
    [job] = system.jobs.jobs_of_study(study)
    assert _final(system, job.job_id).state == JobState.DONE
    assert watcher.check_once() == []  # nothing new: no second generation, no second run
    assert system.jobs.get(job.job_id).run == 1


def test_unmatched_series_is_recorded_not_an_error(make_system) -> None:
    system = make_system(("CT", "series_geometry"))
    series = store_series(system.store, 2)
    study = series[0].StudyInstanceUID
    _stable(system, study)
    assert system.jobs.jobs_of_study(study) == []
    [routing] = system.jobs.routing_of_study(study)
    assert routing.pipelines == () and "no rule matched" in routing.reason and "modality MR" in routing.reason


def test_result_instances_are_stored_with_deterministic_uids(make_system) -> None:
    system = make_system(("MR", "test_slow_sc"))
    series = store_series(system.store, 2)
    study = series[0].StudyInstanceUID
    _stable(system, study)
    [job] = system.jobs.jobs_of_study(study)
    done = _final(system, job.job_id)
    assert done.state == JobState.DONE
    [result] = done.result_instances
    assert result.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7" and result.sop_instance_uid.startswith("2.25.")
    stored = system.store.index.instance(result.sop_instance_uid)
    assert stored is not None and stored["series_uid"] == result.series_uid
    # reprocess: same UIDs, the stored instance replaced rather than duplicated
    again = reprocess(study, pipeline="test_slow_sc", store=system.store, jobs=system.jobs, rules=system.rules,
                      pipelines=system.pipelines, enqueue=system.enqueue)
    assert [j.run for j in again] == [2]
    second = wait_for(lambda: (j := system.jobs.get(job.job_id)).run == 2 and j.state == "done" and j)
    assert second.result_instances == done.result_instances
    assert len(system.store.index.instances_of_series(result.series_uid)) == 1
    assert [e for e, _, _ in read_runs(system.settings.data_dir)].count("finish") == 2


def test_results_are_never_routed_as_inputs(make_system) -> None:
    system = make_system(("MR", "test_slow_sc"))
    system.rules = parse_rules('[[rule]]\nname = "everything"\npipeline = "test_slow_sc"\n')
    series = store_series(system.store, 2)
    study = series[0].StudyInstanceUID
    [job] = _stable(system, study)
    [result] = _final(system, job.job_id).result_instances
    assert system.store.index.study(study)["stable"] == 0  # the results re-opened the study
    assert _stable(system, study) == []  # stable again: the result series matches the rule but is not routed
    routing = {r.series_uid: r for r in system.jobs.routing_of_study(study)}
    assert routing[result.series_uid].output_of == job.job_id
    assert [j.series_uid for j in system.jobs.jobs_of_study(study)] == [series[0].SeriesInstanceUID]


def test_transient_errors_retry_with_backoff_then_succeed(make_system) -> None:
    system = make_system(("MR", "test_flaky"))
    series = store_series(system.store, 1)
    _stable(system, series[0].StudyInstanceUID)
    [job] = system.jobs.jobs_of_study(series[0].StudyInstanceUID)
    done = _final(system, job.job_id, timeout=15)
    assert done.state == JobState.DONE and done.attempts == 3 and done.error_code is None
    assert [e for e, j, _ in read_runs(system.settings.data_dir) if j == job.job_id] == ["start"] * 3


def test_attempts_exhausted_fail_with_the_reason(make_system) -> None:
    system = make_system(("MR", "test_crashes"), max_attempts=2)
    series = store_series(system.store, 1)
    _stable(system, series[0].StudyInstanceUID)
    [job] = system.jobs.jobs_of_study(series[0].StudyInstanceUID)
    failed = _final(system, job.job_id, timeout=15)
    assert failed.state == JobState.FAILED and failed.attempts == 2 and failed.error_code == "PIPELINE_ERROR"
    assert failed.error_message == "failed after 2 attempts: RuntimeError: a bug"


def test_permanent_error_fails_at_once(make_system) -> None:
    system = make_system(("MR", "test_bad_series"))
    series = store_series(system.store, 1)
    _stable(system, series[0].StudyInstanceUID)
    [job] = system.jobs.jobs_of_study(series[0].StudyInstanceUID)
    failed = _final(system, job.job_id)
    assert failed.state == JobState.FAILED and failed.attempts == 1
    assert (failed.error_code, failed.error_message) == ("INVALID_SERIES", "slice 3 is missing")


class _RecordingOutbox:
    """The Outbox protocol: records what it is given, acknowledges when the test says so."""

    def __init__(self) -> None:
        self.queued: dict[str, list[str]] = {}
        self.acked: set[str] = set()

    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        self.queued[job_id] = list(sop_instance_uids)

    def pending(self, job_id: str) -> int:
        return 0 if job_id in self.acked else len(self.queued.get(job_id, []))


def test_results_wait_in_sending_until_the_outbox_acknowledges(make_system) -> None:
    outbox = _RecordingOutbox()
    system = make_system(("MR", "test_slow_sc"), outbox=outbox)
    series = store_series(system.store, 1)
    _stable(system, series[0].StudyInstanceUID)
    [job] = system.jobs.jobs_of_study(series[0].StudyInstanceUID)
    sending = wait_for(lambda: (j := system.jobs.get(job.job_id)).state == "sending" and j)
    assert outbox.queued[job.job_id] == [r.sop_instance_uid for r in sending.result_instances]
    outbox.acked.add(job.job_id)
    # the outbox would call mark_sent; the reconciler's backstop finds it too
    report = system.reconciler.run_once()
    assert report.sent == 1 and system.jobs.get(job.job_id).state == JobState.DONE


class _Receiver(BaseHTTPRequestHandler):
    events: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).events.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_webhook_posts_a_signed_event_when_a_job_ends(make_system) -> None:
    _Receiver.events = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        system = make_system(("MR", "test_bad_series"), webhook_url=url, webhook_secret=SECRET)
        series = store_series(system.store, 1)
        _stable(system, series[0].StudyInstanceUID)
        [job] = system.jobs.jobs_of_study(series[0].StudyInstanceUID)
        _final(system, job.job_id)
        [(headers, body)] = wait_for(lambda: _Receiver.events, what="the webhook")
    finally:
        server.shutdown()
        server.server_close()
    assert verify(SECRET, timestamp=headers[TIMESTAMP_HEADER], body=body, signature=headers[SIGNATURE_HEADER])
    assert not verify("another-secret", timestamp=headers[TIMESTAMP_HEADER], body=body,
                      signature=headers[SIGNATURE_HEADER])
    event = json.loads(body)
    assert event["event"] == "job.failed" and event["job"]["job_id"] == job.job_id
    assert event["job"]["error"] == {"code": "INVALID_SERIES", "message": "slice 3 is missing"}


def test_default_rules_route_by_orientation_and_slices(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    try:
        from neuronova.jobs.store_sqlite import SqliteJobStore
        from neuronova.jobs.service import on_study_stable

        jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
        axial = store_series(store, 20, series_description="AX T1 POST")
        study = axial[0].StudyInstanceUID
        store_series(store, 5, study_uid=study, series_description="AX T1")  # too few slices
        sent: list[str] = []
        fake = type("P", (), {"version": "0"})()
        started = on_study_stable(study, 1, store=store, jobs=jobs, rules=load_rules(),
                                  pipelines={"mri_segmentation": fake}, enqueue=lambda j, **_: sent.append(j))
        assert [j.series_uid for j in started] == [axial[0].SeriesInstanceUID] and sent == [started[0].job_id]
        reasons = {r.series_uid: r.reason for r in jobs.routing_of_study(study)}
        assert any("5 slices, fewer than 20" in r for r in reasons.values())
        # without the model pipeline installed the match is recorded, no job is made
        jobs2 = SqliteJobStore(tmp_path / "jobs2.sqlite3")
        assert on_study_stable(study, 1, store=store, jobs=jobs2, rules=load_rules(), pipelines={},
                               enqueue=lambda j, **_: None) == []
        assert any("not installed: mri_segmentation" in r.reason for r in jobs2.routing_of_study(study))
        jobs.close()
        jobs2.close()
    finally:
        store.close()
