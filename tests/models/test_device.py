"""Device selection, its errors and fallbacks, and mixed precision: tested on the CPU.

This machine has no GPU. Where a test needs "a GPU is present", a monkeypatch stands in for CUDA itself
(``torch.cuda`` answers, the tensor placement) and nothing else: the selection code, the ONNX sessions and
the networks are the real ones.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from neuronova.config import Settings
from neuronova.errors import ConfigError
from neuronova.models import runtime
from neuronova.models.base import NetworkModel
from neuronova.models.registry import DEFAULT_MODEL_DIR, load_model
from neuronova.phantoms.head import make_ct_phantom, make_mr_phantom


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", " CUDA "])
def test_device_forms_accepted(value: str) -> None:
    assert runtime.parse_device(value) == value.strip().lower()


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "mps", "", "cpu,cuda"])
def test_wrong_device_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="NEURONOVA_DEVICE") as info:
        Settings.load({"device": value}, environ={})
    assert "auto, cpu, cuda, cuda:N" in str(info.value)


def test_cuda_without_gpu_stops_the_start_with_the_reason(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "neuronova.cli", "serve", "--device", "cuda",
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert proc.returncode == 2
    assert "NEURONOVA_DEVICE" in proc.stderr and "sees no GPU" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_cpu_only_torch_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(runtime.DeviceError, match="no CUDA support"):
        runtime.check_device("cuda")
    assert runtime.torch_device("auto").type == "cpu"  # auto falls back, never fails


def test_gpu_index_past_the_last_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    runtime.check_device("cuda:0")
    with pytest.raises(runtime.DeviceError, match="only 1 GPU"):
        runtime.check_device("cuda:1")
    assert runtime.torch_device("auto") == torch.device("cuda", 0)
    # onnxruntime here is the CPU build: a GPU device is not an error, ORT simply stays on the CPU
    assert runtime.onnx_providers("cuda") == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.onnx_providers("cuda:0")[0] == ("CUDAExecutionProvider", {"device_id": 0})


@pytest.fixture(scope="module")
def seg_model() -> NetworkModel:
    entry = load_model(DEFAULT_MODEL_DIR / "mri_segmentation", device="cpu")
    assert entry.loaded, entry.error
    return entry.model  # type: ignore[return-value]


@pytest.fixture(scope="module")
def ct_model() -> NetworkModel:
    entry = load_model(DEFAULT_MODEL_DIR / "ct_classification", device="cpu")
    assert entry.loaded, entry.error
    return entry.model  # type: ignore[return-value]


def test_cpu_runs_onnx_runtime_and_reports_it(seg_model: NetworkModel) -> None:
    status = seg_model.runtime_status()
    assert status["backend"] == "onnxruntime" and status["device"] == "cpu"
    assert status["provider"] == "CPUExecutionProvider"
    assert status["gradcam"] == {"backend": "torch", "device": "cpu"}


def _pretend_gpu(monkeypatch: pytest.MonkeyPatch, model: NetworkModel, *, ort_cuda: bool) -> None:
    """Stand-in for CUDA: the model believes its torch device is a GPU (tensors stay on the CPU)."""
    monkeypatch.setattr(model, "torch_device", torch.device("cuda", 0))
    monkeypatch.setattr(model, "as_tensor", lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if ort_cuda else ["CPUExecutionProvider"]
    monkeypatch.setattr(type(model), "providers", property(lambda self: providers))


def test_gpu_without_ort_cuda_runs_torch(monkeypatch: pytest.MonkeyPatch, ct_model: NetworkModel) -> None:
    _pretend_gpu(monkeypatch, ct_model, ort_cuda=False)
    try:
        assert ct_model.choose_backend() == "torch"
        status = ct_model.runtime_status()
        assert status["backend"] == "torch" and status["device"] == "cuda:0" and "provider" not in status
    finally:
        ct_model.backend = "onnx"


def test_gpu_with_ort_cuda_measures_both(monkeypatch: pytest.MonkeyPatch, ct_model: NetworkModel) -> None:
    _pretend_gpu(monkeypatch, ct_model, ort_cuda=True)
    try:
        choice = ct_model.choose_backend()
        timings = ct_model.backend_timings
        assert set(timings) == {"onnx", "torch"} and all(t > 0 for t in timings.values())
        assert choice == min(timings, key=timings.__getitem__)
        assert ct_model.runtime_status()["measured_s"].keys() == {"onnx", "torch"}
    finally:
        ct_model.backend, ct_model.backend_timings = "onnx", {}


def test_backend_declared_in_metadata_wins(monkeypatch: pytest.MonkeyPatch, ct_model: NetworkModel) -> None:
    monkeypatch.setitem(ct_model.metadata.framework, "backend", "torch")
    try:
        assert ct_model.choose_backend() == "torch"  # on the CPU too, when the card says so
    finally:
        ct_model.backend = "onnx"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def test_mixed_precision_gives_the_fp32_result(monkeypatch: pytest.MonkeyPatch, seg_model: NetworkModel,
                                               ct_model: NetworkModel) -> None:
    """bf16 autocast (what a GPU worker may use where a card declares it) against fp32, both on torch: the
    labels' Dice >= 0.99 per label and the same CT class. Run on the CPU, whose autocast has bf16."""
    phantom = make_mr_phantom(7, shape=(96, 128, 128))
    fp32 = seg_model.predict(phantom.image, backend="torch")
    monkeypatch.setattr(seg_model, "precision", "bf16")
    bf16 = seg_model.predict(phantom.image, backend="torch")
    assert fp32.any()
    for label in np.unique(fp32[fp32 > 0]):
        assert _dice(fp32 == label, bf16 == label) >= 0.99, label

    ct = make_ct_phantom(3, shape=(24, 256, 256))
    area = ct.spacing[1] * ct.spacing[2]
    ref = ct_model.classify_volume(ct.image, pixel_area_mm2=area, backend="torch")
    monkeypatch.setattr(ct_model, "precision", "bf16")
    mixed = ct_model.classify_volume(ct.image, pixel_area_mm2=area, backend="torch")
    assert mixed.predicted_class == ref.predicted_class


def test_unknown_precision_in_the_card_refuses_the_model(tmp_path) -> None:
    import json
    import shutil

    path = tmp_path / "ct_classification"
    shutil.copytree(DEFAULT_MODEL_DIR / "ct_classification", path)
    meta = json.loads((path / "metadata.json").read_text())
    meta.setdefault("framework", {})["precision"] = "fp8"
    (path / "metadata.json").write_text(json.dumps(meta))
    entry = load_model(path, device="cpu")
    assert not entry.loaded and "precision" in (entry.error or "")


def test_health_shows_where_each_model_runs() -> None:
    from types import SimpleNamespace

    from neuronova.models.registry import ModelRegistry
    from neuronova.predict.health import predict_health

    body = predict_health(SimpleNamespace(models=ModelRegistry.load(device="cpu", warmup=False)))
    assert body["models"]["mri_segmentation"]["runtime"]["device"] == "cpu"
    assert body["models"]["biomarker_prediction"]["runtime"]["backend"] == "scikit-learn"
    assert "CPUExecutionProvider" in body["onnx_providers_available"]
