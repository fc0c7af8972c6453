"""One contract, every job-store backend: SQLite (embedded) and Redis (a real redis-server)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from neuronova.jobs.model import Job, JobState, ResultInstance, RoutingRecord, job_id_for
from neuronova.jobs.store import CLAIM_SLACK_SECONDS, JobStore
from neuronova.jobs.store_redis import RedisJobStore
from neuronova.jobs.store_sqlite import SqliteJobStore

T0 = 1_750_000_000.0
STUDY = "1.2.3.4"
LEASE = 10.0


def _ensure(store: JobStore, series: str = "1.2.3.4.1", pipeline: str = "p", fp: str = "fp1", *, study: str = STUDY,
            now: float = T0, version: str = "1") -> tuple[Job, bool]:
    return store.ensure_job(study_uid=study, series_uid=series, pipeline=pipeline, model_version=version,
                            input_fingerprint=fp, now=now)


class JobStoreContract:
    """Mixin: the tests every backend passes. Subclasses provide the ``store`` fixture."""

    def test_ensure_creates_once_and_is_idempotent(self, store: JobStore) -> None:
        job, created = _ensure(store)
        assert created and job.state == JobState.QUEUED and job.run == 1 and job.attempts == 0
        assert job.job_id == job_id_for("1.2.3.4.1", "p")
        again, created_again = _ensure(store, now=T0 + 5)
        assert not created_again and again == job
        assert store.get(job.job_id) == job

    def test_changed_inputs_reset_the_job(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        claimed = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 1)
        assert claimed is not None
        assert store.advance(job.job_id, claimed.claim_token, JobState.DONE, now=T0 + 2,
                             summary={"n": 1}) is not None
        reset, again = _ensure(store, fp="fp2", now=T0 + 3)
        assert again and reset.state == JobState.QUEUED and reset.run == 2 and reset.attempts == 0
        assert reset.input_fingerprint == "fp2" and reset.summary == {} and reset.finished_at is None
        # a new model version is a new run too
        bumped, again = _ensure(store, fp="fp2", version="2", now=T0 + 4)
        assert again and bumped.run == 3 and bumped.model_version == "2"

    def test_claim_is_exclusive_under_races(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        winners: list[Job] = []
        barrier = threading.Barrier(8)

        def contender(i: int) -> None:
            barrier.wait()
            got = store.claim(job.job_id, worker=f"w{i}", lease_seconds=LEASE, now=T0 + 1)
            if got is not None:
                winners.append(got)

        threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        won = winners[0]
        assert won.state == JobState.RUNNING and won.attempts == 1 and won.claim_token
        assert won.lease_expires_at == T0 + 1 + LEASE and won.started_at == T0 + 1

    def test_claim_waits_for_due_time(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        claimed = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 1)
        assert claimed is not None
        later = store.retry_later(job.job_id, claimed.claim_token, delay=30, error_code="X", error_message="boom",
                                  now=T0 + 2)
        assert later is not None and later.state == JobState.QUEUED and later.due_at == T0 + 32
        assert later.error_code == "X" and later.claim_token is None and later.worker is None
        assert store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 10) is None
        again = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 32 - CLAIM_SLACK_SECONDS)
        assert again is not None and again.attempts == 2

    def test_heartbeat_and_fencing(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        claimed = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 1)
        assert store.heartbeat(job.job_id, claimed.claim_token, lease_seconds=LEASE, progress=40, now=T0 + 5)
        got = store.get(job.job_id)
        assert got.progress == 40 and got.lease_expires_at == T0 + 5 + LEASE and got.heartbeat_at == T0 + 5
        assert not store.heartbeat(job.job_id, "not-the-token", lease_seconds=LEASE, now=T0 + 6)
        assert store.advance(job.job_id, "not-the-token", JobState.WRITING, now=T0 + 6) is None
        # a reset (reprocess) fences the old claim out
        reset = store.reset(job.job_id, now=T0 + 7)
        assert reset.state == JobState.QUEUED and reset.run == 2 and reset.claim_token is None
        assert not store.heartbeat(job.job_id, claimed.claim_token, lease_seconds=LEASE, now=T0 + 8)
        assert store.advance(job.job_id, claimed.claim_token, JobState.WRITING, now=T0 + 8) is None

    def test_full_path_to_done_and_listener(self, store: JobStore) -> None:
        ended: list[Job] = []
        store.add_end_listener(ended.append)
        job, _ = _ensure(store)
        c = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 1)
        writing = store.advance(job.job_id, c.claim_token, JobState.WRITING, progress=90.0, now=T0 + 2)
        assert writing.state == JobState.WRITING and writing.progress == 90.0
        results = (ResultInstance("1.2.840.10008.5.1.4.1.1.7", "2.25.1", "2.25.2"),)
        sending = store.advance(job.job_id, c.claim_token, JobState.SENDING, result_instances=results,
                                summary={"a": [1, 2]}, now=T0 + 3)
        assert sending.state == JobState.SENDING and sending.claim_token is None and sending.lease_expires_at is None
        assert sending.result_instances == results and sending.summary == {"a": [1, 2]}
        assert ended == [] and [j.job_id for j in store.sending()] == [job.job_id]
        done = store.mark_sent(job.job_id, now=T0 + 4)
        assert done.state == JobState.DONE and done.finished_at == T0 + 4 and done.progress == 100.0
        assert store.mark_sent(job.job_id, now=T0 + 5) is None
        assert [j.state for j in ended] == [JobState.DONE]
        assert store.counts()["done"] == 1 and store.counts()["queued"] == 0

    def test_fail_is_final(self, store: JobStore) -> None:
        ended: list[Job] = []
        store.add_end_listener(ended.append)
        job, _ = _ensure(store)
        c = store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 1)
        failed = store.fail(job.job_id, token=c.claim_token, error_code="INVALID_SERIES", error_message="gap",
                            now=T0 + 2)
        assert failed.state == JobState.FAILED and failed.error_code == "INVALID_SERIES"
        assert failed.finished_at == T0 + 2 and failed.claim_token is None
        assert store.fail(job.job_id, error_code="X", error_message="again", now=T0 + 3) is None
        assert store.claim(job.job_id, worker="w", lease_seconds=LEASE, now=T0 + 4) is None
        assert [j.error_code for j in ended] == ["INVALID_SERIES"]

    def test_expired_lease_is_recovered_then_failed(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        c = store.claim(job.job_id, worker="w1", lease_seconds=LEASE, now=T0 + 1)
        assert store.expired(now=T0 + 5) == []
        [stale] = store.expired(now=T0 + 12)
        assert stale.claim_token == c.claim_token
        requeued = store.recover(stale, max_attempts=2, now=T0 + 12)
        assert requeued.state == JobState.QUEUED and requeued.worker is None and requeued.due_at == T0 + 12
        assert store.recover(stale, max_attempts=2, now=T0 + 12) is None  # a second reconciler loses
        c2 = store.claim(job.job_id, worker="w2", lease_seconds=LEASE, now=T0 + 13)
        assert c2.attempts == 2
        [stale2] = store.expired(now=T0 + 30)
        failed = store.recover(stale2, max_attempts=2, now=T0 + 30)
        assert failed.state == JobState.FAILED and failed.error_code == "WORKER_LOST"
        assert store.expired(now=T0 + 60) == []

    def test_expired_lease_can_be_claimed_directly(self, store: JobStore) -> None:
        job, _ = _ensure(store)
        c = store.claim(job.job_id, worker="w1", lease_seconds=LEASE, now=T0 + 1)
        assert store.claim(job.job_id, worker="w2", lease_seconds=LEASE, now=T0 + 5) is None
        taken = store.claim(job.job_id, worker="w2", lease_seconds=LEASE, now=T0 + 12)
        assert taken.worker == "w2" and taken.attempts == 2 and taken.claim_token != c.claim_token
        assert not store.heartbeat(job.job_id, c.claim_token, lease_seconds=LEASE, now=T0 + 13)

    def test_queued_due_before(self, store: JobStore) -> None:
        a, _ = _ensure(store, "1.2.3.4.1", now=T0)
        b, _ = _ensure(store, "1.2.3.4.2", now=T0 + 10)
        assert [j.job_id for j in store.queued_due_before(T0 + 5)] == [a.job_id]
        store.claim(a.job_id, worker="w", lease_seconds=LEASE, now=T0 + 11)
        assert [j.job_id for j in store.queued_due_before(T0 + 20)] == [b.job_id]

    def test_list_filters_and_pages(self, store: JobStore) -> None:
        ids = []
        for i in range(7):
            job, _ = _ensure(store, f"1.2.3.4.{i + 1}", study=STUDY if i % 2 == 0 else "1.2.3.5", now=T0 + i)
            ids.append(job.job_id)
        # two jobs with the same updated_at: the job id orders them
        same, _ = _ensure(store, "1.2.3.4.99", now=T0 + 6)
        c = store.claim(ids[0], worker="w", lease_seconds=LEASE, now=T0 + 20)
        assert c is not None
        everything = store.list_jobs(limit=100)
        assert [j.updated_at for j in everything] == sorted(j.updated_at for j in everything)
        assert everything[-1].job_id == ids[0] and len(everything) == 8
        pages, after = [], None
        while True:
            page = store.list_jobs(limit=3, after=after)
            if not page:
                break
            pages.append(page)
            after = (page[-1].updated_at, page[-1].job_id)
        assert [j.job_id for p in pages for j in p] == [j.job_id for j in everything]
        assert [len(p) for p in pages] == [3, 3, 2]
        assert {j.job_id for j in store.list_jobs(state=JobState.RUNNING)} == {ids[0]}
        assert {j.job_id for j in store.list_jobs(study_uid="1.2.3.5")} == {ids[1], ids[3], ids[5]}
        assert [j.job_id for j in store.list_jobs(since=T0 + 5)] == [
            ids[5], *sorted([ids[6], same.job_id]), ids[0]]
        assert [j.job_id for j in store.list_jobs(study_uid=STUDY, state=JobState.QUEUED, since=T0 + 3)] == [
            ids[4], *sorted([ids[6], same.job_id])]
        assert len(store.jobs_of_study(STUDY)) == 5  # 4 of the loop and "same"

    def test_routing_records(self, store: JobStore) -> None:
        rec = RoutingRecord(STUDY, "1.2.3.4.1", 1, (), "no rule matched", T0)
        store.set_routing(rec)
        store.set_routing(RoutingRecord(STUDY, "1.2.3.4.2", 1, ("a", "b"), "matched a, b", T0))
        store.set_routing(RoutingRecord(STUDY, "1.2.3.4.1", 2, ("a",), "matched a", T0 + 1))
        got = store.routing_of_study(STUDY)
        assert [(r.series_uid, r.generation, r.pipelines) for r in got] == [
            ("1.2.3.4.1", 2, ("a",)), ("1.2.3.4.2", 1, ("a", "b"))]
        assert store.routing_of_study("9.9") == []

    def test_values_round_trip(self, store: JobStore) -> None:
        job, _ = _ensure(store, now=T0 + 0.123456789)
        c = store.claim(job.job_id, worker="w", lease_seconds=0.1, now=T0 + 1 / 3)
        assert c.started_at == T0 + 1 / 3 and c.lease_expires_at == T0 + 1 / 3 + 0.1
        assert store.get(job.job_id).created_at == T0 + 0.123456789


class TestSqliteJobStore(JobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> JobStore:
        s = SqliteJobStore(tmp_path / "jobs.sqlite3")
        yield s
        s.close()

    def test_survives_reopening(self, tmp_path: Path) -> None:
        s = SqliteJobStore(tmp_path / "j.sqlite3")
        job, _ = _ensure(s)
        s.close()
        s2 = SqliteJobStore(tmp_path / "j.sqlite3")
        assert s2.get(job.job_id) == job
        s2.close()


class TestRedisJobStore(JobStoreContract):
    @pytest.fixture
    def store(self, redis_jobs) -> JobStore:
        s = RedisJobStore(redis_jobs.url)
        yield s
        s.close()
