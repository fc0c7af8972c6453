"""Micro-batching: concurrent requests share a forward pass, and each answer is what it would be alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from neuronova.predict.batching import MicroBatcher
from tests.predict.conftest import dicom_bytes


def recording_batcher(**kwargs):
    sizes: list[int] = []
    threads: list[int] = []

    def fn(items):
        sizes.append(len(items))
        threads.append(threading.get_ident())
        return [item * 10 for item in items]

    return MicroBatcher(fn, **kwargs), sizes, threads


def test_a_lone_request_does_not_wait() -> None:
    batcher, sizes, _ = recording_batcher(max_batch_size=8, wait_ms=2000)
    try:
        started = time.monotonic()
        with batcher.slot() as slot:
            assert slot.submit(3).result(5) == 30
        assert time.monotonic() - started < 0.5  # nobody else was announced: no 2 s wait
        assert sizes == [1]
    finally:
        batcher.close()


def test_announced_requests_are_gathered_into_one_batch() -> None:
    batcher, sizes, _ = recording_batcher(max_batch_size=8, wait_ms=2000)
    slots = [batcher.slot() for _ in range(5)]
    opened = [s.__enter__() for s in slots]
    results: dict[int, int] = {}

    def late(i: int) -> None:
        time.sleep(0.02 * i)  # staggered, as uploads finish decoding at different times
        results[i] = opened[i].submit(i).result(5)
        slots[i].__exit__(None, None, None)

    try:
        workers = [threading.Thread(target=late, args=(i,)) for i in range(5)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        assert results == {i: 10 * i for i in range(5)}
        assert sizes == [5]
        assert batcher.stats.as_dict()["largest_batch"] == 5
    finally:
        batcher.close()


def test_a_withdrawn_slot_does_not_hold_the_batch_and_errors_reach_every_item() -> None:
    calls = []

    def fn(items):
        calls.append(list(items))
        if -1 in items:
            raise ValueError("bad batch")
        return list(items)

    batcher = MicroBatcher(fn, max_batch_size=4, wait_ms=5000)
    try:
        with batcher.slot():
            pass  # this request failed before submitting (a bad upload)
        started = time.monotonic()
        with batcher.slot() as slot:
            assert slot.submit(7).result(5) == 7
        assert time.monotonic() - started < 1.0
        futures = [batcher.submit(-1)]
        for future in futures:
            with pytest.raises(ValueError, match="bad batch"):
                future.result(5)
    finally:
        batcher.close()


def test_batching_off_runs_in_the_callers_thread() -> None:
    batcher, sizes, threads = recording_batcher(max_batch_size=1, wait_ms=5)
    with batcher.slot() as slot:
        assert slot.submit(2).result(0) == 20
    assert threads == [threading.get_ident()] and sizes == [1] and not batcher.enabled


@pytest.mark.slow
def test_same_answers_with_batching_on_and_off(make_api, serve, ct_study) -> None:
    """Eight concurrent clients against a real uvicorn server: batches form, and every probability is the
    one the same image gets without batching (within 1e-5)."""
    images = [dicom_bytes(ds) for ds in ct_study.datasets[:8]]

    def run(url: str, headers: dict[str, str], xai: bool) -> list[dict]:
        barrier = threading.Barrier(len(images))

        def one(data: bytes) -> dict:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                barrier.wait()
                response = http.post("/predict/ct_classification", files={"image": ("s.dcm", data)},
                                     data={"xai": "true" if xai else "false"})
                assert response.status_code == 200, response.text
                return response.json()

        with ThreadPoolExecutor(len(images)) as pool:
            return list(pool.map(one, images))

    on = serve(make_api(max_batch_size=8, batch_wait_ms=100))
    off = serve(make_api(max_batch_size=1))
    for xai in (False, True):
        batched = run(on.url, on.api.headers(), xai)
        alone = run(off.url, off.api.headers(), xai)
        assert max(b["batch_size"] for b in batched) > 1, [b["batch_size"] for b in batched]
        assert all(a["batch_size"] == 1 for a in alone)
        for b, a in zip(batched, alone, strict=True):
            assert b["result"]["predicted_class"] == a["result"]["predicted_class"]
            for name, p in a["result"]["probabilities"].items():
                assert b["result"]["probabilities"][name] == pytest.approx(p, abs=1e-5)
            if xai:
                assert [r["x"] for r in b["xai"]["grad_cam"]["important_regions"]] == \
                       [r["x"] for r in a["xai"]["grad_cam"]["important_regions"]]
