import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuronova.errors import ModelNotLoaded
from neuronova.models import ModelRegistry, load_model
from neuronova.models.classification import ClassificationModel
from neuronova.models.metadata import read_metadata, sha256_file, write_metadata
from neuronova.models.registry import DEFAULT_MODEL_DIR, MODEL_IDS
from neuronova.models.segmentation import SegmentationModel


class _Trap:
    """Pickles to a call that creates the file named by ``path``: loading it would be code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def ct_copy(tmp_path):
    target = tmp_path / "models" / "ct_classification"
    shutil.copytree(DEFAULT_MODEL_DIR / "ct_classification", target)
    return target


def _rehash(model_dir: Path) -> None:
    metadata = read_metadata(model_dir)
    metadata.files = {name: sha256_file(model_dir / name) for name in metadata.files}
    write_metadata(model_dir, metadata)


def test_shipped_demo_models_load_and_report_status(demo_registry):
    status = demo_registry.status()
    assert set(MODEL_IDS) <= set(status)
    for model_id in MODEL_IDS:
        assert status[model_id]["loaded"], status[model_id]["error"]
        assert status[model_id]["version"] and len(status[model_id]["model_hash"]) == 64
        assert status[model_id]["not_for_clinical_use"] is True
    assert isinstance(demo_registry.get("mri_segmentation", SegmentationModel), SegmentationModel)
    with pytest.raises(ModelNotLoaded, match="not SegmentationModel"):
        demo_registry.get("ct_classification", SegmentationModel)


def test_shipped_files_are_small_and_metadata_complete():
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert total < 6 * 1024**2
    for model_id in MODEL_IDS:
        meta = json.loads((DEFAULT_MODEL_DIR / model_id / "metadata.json").read_text())
        for key in ("id", "version", "task", "labels", "input", "output", "training", "intended_use", "metrics"):
            assert meta[key], key
        assert meta["not_for_clinical_use"] is True
    assert read_metadata(DEFAULT_MODEL_DIR / "ct_classification").labels == ["Glioma", "Meningioma", "Pituitary", "No Tumor"]


def test_missing_model_gives_an_unloaded_entry(tmp_path):
    registry = ModelRegistry.load(tmp_path, warmup=False)
    entry = registry.entries["mri_segmentation"]
    assert entry.loaded is False and "not found" in entry.error
    assert registry.status()["mri_segmentation"]["loaded"] is False
    with pytest.raises(ModelNotLoaded) as info:
        registry.get("mri_segmentation")
    assert info.value.http_status == 503 and info.value.code == "MODEL_NOT_LOADED"
    with pytest.raises(ModelNotLoaded, match="unknown model"):
        registry.get("no_such_model")
    assert "mri_segmentation" not in registry


def test_corrupted_weights_fail_the_hash_check(ct_copy):
    data = bytearray((ct_copy / "weights.npz").read_bytes())
    data[-100] ^= 0xFF
    (ct_copy / "weights.npz").write_bytes(bytes(data))
    entry = load_model(ct_copy)
    assert not entry.loaded and "SHA-256" in entry.error
    registry = ModelRegistry({"ct_classification": entry})
    with pytest.raises(ModelNotLoaded, match="SHA-256"):
        registry.get("ct_classification")


def test_unreadable_metadata_and_wrong_id(ct_copy):
    (ct_copy / "metadata.json").write_text("{not json")
    assert "ValidationError" in load_model(ct_copy).error
    renamed = ct_copy.parent / "other_model"
    shutil.copytree(DEFAULT_MODEL_DIR / "ct_classification", renamed)
    assert "directory is 'other_model'" in load_model(renamed).error


def test_a_pickle_in_the_weights_is_never_executed(ct_copy, tmp_path):
    sentinel = tmp_path / "code-was-executed"
    with np.load(ct_copy / "weights.npz") as weights:
        arrays = {name: weights[name] for name in weights.files}
    first = next(iter(arrays))
    arrays[first] = np.array([_Trap(sentinel)], dtype=object)
    with (ct_copy / "weights.npz").open("wb") as fh:
        np.savez(fh, **arrays)
    _rehash(ct_copy)  # an attacker who can write the directory can also fix the digests
    # control: what unpickling the trap would call does create its file (run here directly, not by unpickling)
    call, args = _Trap(tmp_path / "control").__reduce__()
    assert call(*args) is None and (tmp_path / "control").exists()
    entry = load_model(ct_copy)
    assert not entry.loaded and "pickle" in entry.error.lower()
    assert not sentinel.exists()


def test_architecture_comes_from_the_package_only(ct_copy, tmp_path):
    sentinel = tmp_path / "imported"
    (ct_copy / "model.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    metadata = read_metadata(ct_copy)
    metadata.architecture.name = "model.Net"
    write_metadata(ct_copy, metadata)
    entry = load_model(ct_copy)
    assert not entry.loaded and "unknown architecture 'model.Net'" in entry.error
    assert not sentinel.exists()


def test_good_copy_loads_and_is_warmed_up(ct_copy):
    entry = load_model(ct_copy, device="cpu")
    assert entry.loaded and entry.error is None
    assert isinstance(entry.model, ClassificationModel)
    assert entry.model.providers == ["CPUExecutionProvider"]
    assert entry.model.model_hash == read_metadata(ct_copy).model_hash


def test_layouts_are_detected_and_study_cards_load_the_study_model(tmp_path):
    """A node-layout segmentation card with input.roles loads as the study model (torch + ONNX weights); the same
    card without weights.npz and architecture is an ONNX-only model; a directory with neither card is refused."""
    import torch
    from monai.networks.nets import UNet

    from neuronova.models.multiseq import StudySegmentationModel
    from neuronova.models.onnx_only import is_onnx_only
    from neuronova.models.registry import detect_layout
    from neuronova.models.runtime import save_weights
    from neuronova.models.train_demo import export_onnx
    from neuronova.models.volumetric import VolumeSegmenter

    params = {"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "channels": [8, 16], "strides": [2],
              "num_res_units": 1}
    torch.manual_seed(0)
    net = UNet(**params).eval()
    study = tmp_path / "study"
    study.mkdir()
    save_weights(net, study / "weights.npz")
    example = torch.randn((1, 2, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    export_onnx(net, example, study / "model.onnx", dynamic_batch=True)
    card = {"id": "study", "name": "Two-role study model", "version": "0.1", "task": "segmentation",
            "labels": {"1": "whole tumour"}, "input": {"roles": ["t1c", "flair"], "roi_size": [16, 16, 16]},
            "output": {"activation": "softmax"}, "intended_use": "tests",
            "architecture": {"name": "monai.networks.nets.UNet", "params": params},
            "files": {name: sha256_file(study / name) for name in ("weights.npz", "model.onnx")}}
    (study / "metadata.json").write_text(json.dumps(card))
    entry = load_model(study, device="cpu", warmup=False)
    assert entry.loaded, entry.error
    assert isinstance(entry.model, StudySegmentationModel) and isinstance(entry.model, VolumeSegmenter)
    assert entry.status()["layout"] == "node_study" and entry.status()["gradcam"] is True

    onnx_only = tmp_path / "onnx_only"
    onnx_only.mkdir()
    shutil.copy(study / "model.onnx", onnx_only / "model.onnx")
    card.update(id="onnx_only", architecture=None, files={"model.onnx": card["files"]["model.onnx"]})
    (onnx_only / "metadata.json").write_text(json.dumps(card))
    assert is_onnx_only(onnx_only, read_metadata(onnx_only))
    entry = load_model(onnx_only, device="cpu", warmup=False)
    assert entry.loaded, entry.error
    assert entry.status()["layout"] == "onnx_only" and entry.status()["gradcam"] is False
    image = np.random.default_rng(0).normal(size=(2, 20, 18, 16)).astype(np.float32)
    np.testing.assert_allclose(entry.model.infer(image), load_model(study, device="cpu", warmup=False).model.infer(image),
                               atol=1e-3)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither metadata.json nor configs/metadata.json"):
        detect_layout(tmp_path / "empty")
    assert "neither metadata.json" in load_model(tmp_path / "empty").error
