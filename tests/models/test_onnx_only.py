"""ONNX-only models: a node-layout card with ``model.onnx`` and no torch weights, and a MONAI bundle whose only
weights are ``models/model.onnx``; both run in ONNX Runtime behind the VolumeSegmenter contract, without
Grad-CAM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from neuronova.models import ModelRegistry, load_model
from neuronova.models.bundle import GRADCAM_UNAVAILABLE_ONNX, VolumeModel
from neuronova.models.metadata import sha256_file
from neuronova.models.train_demo import export_onnx
from neuronova.models.volumetric import VolumeSegmenter

WINDOW = (32, 32, 32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet, Path]:
    """A 4-channel, 3-output UNet with random weights and its ONNX export (fixed (1, 4, 32, 32, 32) input)."""
    torch.manual_seed(2)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    example = torch.randn((1, 4, *WINDOW), generator=torch.Generator().manual_seed(0))
    diff = export_onnx(net, example, path, dynamic_batch=False)
    assert diff < 1e-3
    return net, path


def _card(model_id: str, onnx: Path, **changes: object) -> dict[str, object]:
    card: dict[str, object] = {
        "id": model_id, "name": "Tumour regions (ONNX)", "version": "2.0.0", "task": "segmentation",
        "description": "Exported by another group as ONNX only.",
        "labels": {"0": "tumour core", "1": "whole tumour", "2": "enhancing tumour"},
        "input": {"roles": ["t1c", "t1", "t2", "flair"], "optional_roles": ["t1"], "axcodes": "LPS",
                  "pixdim": [1.0, 1.0, 1.0], "normalisation": "zscore_nonzero", "overlap": 0.5},
        "output": {"activation": "sigmoid", "threshold": 0.4, "num_channels": 3},
        "intended_use": "tests", "files": {"model.onnx": sha256_file(onnx)},
    }
    card.update(changes)
    return card


def _model_dir(root: Path, model_id: str, onnx: Path, **changes: object) -> Path:
    target = root / model_id
    target.mkdir(parents=True)
    shutil.copy(onnx, target / "model.onnx")
    (target / "metadata.json").write_text(json.dumps(_card(model_id, onnx, **changes)))
    return target


def _expected(net: UNet, image: np.ndarray, overlap: float) -> np.ndarray:
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None], WINDOW, 1, net, overlap=overlap, mode="gaussian")
    return torch.sigmoid(torch.as_tensor(logits))[0].numpy()


def test_onnx_only_model_runs_without_gradcam(tmp_path: Path, exported: tuple[UNet, Path]) -> None:
    net, onnx = exported
    entry = load_model(_model_dir(tmp_path, "onnx_regions", onnx), device="cpu")  # warm-up included
    assert entry.loaded, entry.error
    model = entry.model
    assert isinstance(model, VolumeModel) and isinstance(model, VolumeSegmenter)
    assert model.roles == ("t1c", "t1", "t2", "flair") and model.optional_roles == frozenset({"t1"})
    assert model.preprocessing.axcodes == "LPS" and model.preprocessing.normalisation == "zscore_nonzero"
    assert model.roi_size == WINDOW  # from the graph's fixed input shape
    assert model.postprocessing.threshold == 0.4 and [r.name for r in model.postprocessing.regions] == [
        "tumour core", "whole tumour", "enhancing tumour"]
    assert model.runtime.backend == "onnxruntime" and model.runtime.provider == "CPUExecutionProvider"
    assert model.gradcam_module() is None
    assert GRADCAM_UNAVAILABLE_ONNX in model.description and GRADCAM_UNAVAILABLE_ONNX in model.runtime.notes
    status = entry.status()
    assert status["layout"] == "onnx_only" and status["gradcam"] is False
    assert status["gradcam_reason"] == GRADCAM_UNAVAILABLE_ONNX and status["version"] == "2.0.0"
    assert model.runtime_status()["gradcam"] == {"available": False, "reason": GRADCAM_UNAVAILABLE_ONNX}

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 40, 44, 36)).astype(np.float32)
    probs = model.infer(image)
    assert probs.shape == (3, 40, 44, 36) and 0 <= probs.min() and probs.max() <= 1
    np.testing.assert_allclose(probs, _expected(net, image, 0.5), atol=1e-3)


def test_a_bundle_with_only_an_onnx_graph(tmp_path: Path, exported: tuple[UNet, Path]) -> None:
    from tests.models.test_bundles import BRATS_INFERENCE, BRATS_METADATA

    net, onnx = exported
    bundle = tmp_path / "onnx_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    shutil.copy(onnx, bundle / "models" / "model.onnx")
    config = {k: v for k, v in BRATS_INFERENCE.items() if k not in ("network_def", "roi")}
    config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": list(WINDOW), "overlap": 0.25,
                         "mode": "gaussian"}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(BRATS_METADATA))
    entry = load_model(bundle, device="cpu", warmup=False)
    assert entry.loaded, entry.error
    assert entry.status()["gradcam"] is False and entry.model.gradcam_module() is None
    image = np.random.default_rng(1).normal(size=(4, 36, 36, 36)).astype(np.float32)
    np.testing.assert_allclose(entry.model.infer(image), _expected(net, image, 0.25), atol=1e-3)


def test_onnx_only_cards_the_node_cannot_run_are_refused(tmp_path: Path, exported: tuple[UNet, Path]) -> None:
    _, onnx = exported
    root = tmp_path / "models"
    _model_dir(root, "no_roles", onnx, input={"axcodes": "RAS"})
    _model_dir(root, "classifier", onnx, task="classification")
    _model_dir(root, "three_roles", onnx, input={"roles": ["t1c", "t2", "flair"]})
    _model_dir(root, "good", onnx)
    registry = ModelRegistry.load(root, device="cpu", warmup=False)
    status = registry.status()
    assert "needs input.roles" in status["no_roles"]["reason"]
    assert "study-level segmentation" in status["classifier"]["reason"]
    assert "takes 4 channels" in status["three_roles"]["reason"]
    assert status["good"]["loaded"] is True
