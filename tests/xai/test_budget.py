import threading
import time

import pytest
import torch
from torch import nn

from neuronova.errors import XAIGenerationError
from neuronova.xai import explain_classification, model_lock, run_with_budget

from .models import SquareNet


class SlowNet(SquareNet):
    """Sleeps in its forward, before the target layer, as a model stuck on a slow device would."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        output = super().forward(x)
        self.forwards += 1  # counts completed forwards only
        return output


def test_result_within_budget():
    assert run_with_budget(lambda: 42, 5.0) == 42
    assert run_with_budget(lambda: 42, None) == 42


def test_budget_exceeded_raises_at_once():
    started = time.perf_counter()
    with pytest.raises(XAIGenerationError, match="time budget") as info:
        run_with_budget(lambda: time.sleep(2), 0.1)
    assert time.perf_counter() - started < 1.0
    assert info.value.code == "XAI_GENERATION_ERROR" and info.value.http_status == 500


def test_failures_become_xai_errors_with_the_cause_chained():
    def broken() -> None:
        raise RuntimeError("CUDA out of memory")

    for budget in (None, 1.0):
        with pytest.raises(XAIGenerationError, match="CUDA out of memory") as info:
            run_with_budget(broken, budget)
        assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError):
        run_with_budget(lambda: None, 0)


def test_slow_grad_cam_exceeds_its_budget_and_the_abandoned_worker_stops_at_its_checkpoint():
    net = SlowNet(delay=1.0).eval()
    image = torch.zeros(1, 1, 16, 16)
    started = time.perf_counter()
    with pytest.raises(XAIGenerationError, match="time budget"):
        explain_classification(net, net.features, image, time_budget_s=0.1)
    assert time.perf_counter() - started < 0.8  # not the 1 s the forward takes
    # The abandoned worker finishes its sleep, reaches the target layer's checkpoint, gives up there and
    # releases the model: the next explanation with a sufficient budget succeeds.
    net.delay = 0.0
    explanation = explain_classification(net, net.features, image, time_budget_s=5.0)
    assert explanation.heatmap.shape == (16, 16)
    assert all(not m._forward_hooks for m in net.modules())
    assert net.forwards == 1  # the abandoned forward never completed


def test_waiting_for_the_model_lock_counts_against_the_budget():
    model = nn.Linear(2, 2)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with model_lock(model):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        def locked() -> int:
            with model_lock(model):
                return 1

        started = time.perf_counter()
        with pytest.raises(XAIGenerationError):
            run_with_budget(locked, 0.2)
        assert time.perf_counter() - started < 1.0
    finally:
        release.set()
        holder.join()
    assert run_with_budget(locked, 1.0) == 1
