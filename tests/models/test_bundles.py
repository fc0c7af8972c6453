"""MONAI bundles as node models: built here in MONAI's layout with random weights, loaded, run, and refused when
they would need code to run.

The BraTS bundle's configs follow MONAI's model-zoo ``brats_mri_segmentation`` (its ``$`` imports, device,
data list, evaluator and run entries included, which the node must ignore, never evaluate).
"""

from __future__ import annotations

import copy
import json
import pickletools
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet, UNet

from neuronova.errors import ModelNotLoaded
from neuronova.models import ModelRegistry, load_model
from neuronova.models.base import LoadedModel
from neuronova.models.bundle import VolumeModel, apply_normalisation, load_bundle, read_bundle_info
from neuronova.models.volumetric import VolumeSegmenter
from neuronova.phantoms.study import make_world

BRATS_NET = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
             "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}

BRATS_INFERENCE: dict[str, Any] = {
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "output_dir": "$@bundle_root + '/eval'",
    "output_ext": ".nii.gz",
    "output_dtype": "uint8",
    "dataset_dir": "/workspace/data/medical/brats2018challenge",
    "test_datalist": "$monai.data.load_decathlon_datalist(@bundle_root + '/configs/datalist.json', "
                     "data_list_key='testing', base_dir=@dataset_dir)",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "amp": True,
    "network_def": BRATS_NET,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key", "image_only": False},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True, "channel_wise": True},
    ]},
    "dataset": {"_target_": "Dataset", "data": "@test_datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 4},
    "roi": [48, 48, 48],  # the zoo's is [240, 240, 160]: small here to run several windows on a small volume
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        {"_target_": "Lambdad", "keys": "pred",
         "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
         "output_dtype": "@output_dtype", "resample": False, "squeeze_end_dims": True},
    ]},
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing", "amp": True},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}},
    "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}

BRATS_METADATA: dict[str, Any] = {
    "version": "0.5.2",
    "monai_version": "1.4.0",
    "name": "BraTS MRI segmentation",
    "task": "Multimodal Brain Tumor segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of brain tumor subregions",
    "image_classes": "4 channel data, T1c, T1, T2, FLAIR at 1x1x1 mm",
    "label_classes": "3 channel data, channel 0 for Tumor core, channel 1 for Whole tumor, channel 2 for Enhancing tumor",
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
                             "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32",
                             "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                             "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [0, 1],
                             "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}},
    },
}


class _Trap:
    """Pickles to a call that creates the file named by ``path``: loading it would be code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def write_bundle(root: Path, name: str, *, inference: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None, network: torch.nn.Module | None = None,
                 side: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A bundle directory in MONAI's layout: configs/metadata.json, configs/inference.json, models/model.pt."""
    bundle = root / name
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "docs").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata or BRATS_METADATA, indent=2))
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference or BRATS_INFERENCE, indent=2))
    (bundle / "docs" / "README.md").write_text("# test bundle\n")
    if network is None:
        torch.manual_seed(seed)
        args = {k: v for k, v in BRATS_NET.items() if k != "_target_"}
        network = SegResNet(**args)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    if side is not None:
        (bundle / "neuronova.json").write_text(json.dumps(side))
    return bundle


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """A four-channel head with one tumour (T1c, T1, T2, FLAIR), 3 mm voxels, (4, 64, 64, 48)."""
    world = make_world(0, n_tumours=1, spacing=3.0, shape=(48, 64, 64))
    # (z, y, x) -> (I, J, K) = (x, y, z): the axes RAS-like contracts index first
    return np.stack([world.images[r].transpose(2, 1, 0) for r in ("t1c", "t1", "t2", "flair")]).astype(np.float32)


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("models"), "brats_mri_segmentation", side={"axcodes": "LPS"})


def test_brats_bundle_loads_as_a_volume_segmenter(brats: Path) -> None:
    model = load_bundle(brats, device="cpu")
    assert isinstance(model, VolumeSegmenter)
    assert model.roles == ("t1c", "t1", "t2", "flair") and model.optional_roles == frozenset()
    assert model.preprocessing.normalisation == "zscore_nonzero"
    assert model.preprocessing.pixdim == (1.0, 1.0, 1.0)  # from image_classes "... at 1x1x1 mm"
    assert model.preprocessing.axcodes == "LPS"  # from neuronova.json: the bundle does not say
    post = model.postprocessing
    assert post.activation == "sigmoid" and post.threshold == 0.5
    assert [(r.index, r.name) for r in post.regions] == [(0, "tumour core"), (1, "whole tumour"), (2, "enhancing tumour")]
    assert model.roi_size == (48, 48, 48) and model.overlap == 0.5
    assert model.runtime.backend == "torch" and model.runtime.device == "cpu"
    network, layer = model.gradcam_module()  # type: ignore[misc]
    assert isinstance(network, SegResNet) and layer is network.down_layers[3]
    assert any("Lambdad" in note and "not run" in note for note in model.notes)
    assert model.version == "0.5.2" and len(model.model_hash) == 64


def test_brats_infer_matches_monai_running_the_same_bundle(brats: Path, phantom: np.ndarray) -> None:
    """Our reading of the config gives what MONAI's own ConfigParser builds from it (trusted here: we wrote it)."""
    from monai.bundle import ConfigParser

    model = load_bundle(brats, device="cpu")
    image = apply_normalisation(phantom, model.preprocessing.normalisation)
    nonzero = phantom != 0
    assert abs(float(image[0][nonzero[0]].mean())) < 1e-3 and abs(float(image[0][nonzero[0]].std()) - 1) < 1e-2
    probs = model.infer(image)
    assert probs.shape == (3, *phantom.shape[1:]) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0 and probs.std() > 0

    parser = ConfigParser()
    parser.read_config(brats / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(brats / "models" / "model.pt", weights_only=True))
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    with torch.inference_mode():
        expected = torch.sigmoid(inferer(torch.from_numpy(image)[None], network))[0].numpy()
    # 1e-4: on the CPU the node runs the network channels_last_3d, which sums in another order (seen: 1.3e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    masks = probs > model.postprocessing.threshold  # regions overlap: each channel thresholded on its own
    assert masks.shape[0] == len(model.postprocessing.regions)


def test_bad_images_are_refused_with_a_clear_error(brats: Path, phantom: np.ndarray) -> None:
    model = load_bundle(brats, device="cpu")
    with pytest.raises(ValueError, match=r"\(4, I, J, K\)"):
        model.infer(phantom[:3])
    with pytest.raises(ValueError, match="NaN"):
        bad = phantom.copy()
        bad[0, 0, 0, 0] = np.nan
        model.infer(bad)
    with pytest.raises(TypeError, match="numpy array"):
        model.infer(phantom.tolist())  # type: ignore[arg-type]


def test_bundle_status_on_health_and_hash_over_its_files(brats: Path, tmp_path: Path) -> None:
    entry = load_model(brats, device="cpu", warmup=False)
    assert entry.loaded, entry.error
    status = entry.status()
    assert status["name"] == "BraTS MRI segmentation" and status["version"] == "0.5.2"
    assert status["layout"] == "monai_bundle" and status["gradcam"] is True and status["reason"] is None
    assert status["model_hash"] == read_bundle_info(brats).model_hash == entry.model.metadata.model_hash
    assert isinstance(entry.model, LoadedModel) and entry.model.metadata.input["roles"] == ["t1c", "t1", "t2", "flair"]
    assert "tumour core" in status["description"] and "inputs t1c, t1, t2, flair" in status["description"]
    assert entry.model.runtime_status()["backend"] == "torch"
    copy_dir = tmp_path / "brats_mri_segmentation"
    shutil.copytree(brats, copy_dir)
    assert read_bundle_info(copy_dir).model_hash == status["model_hash"]
    (copy_dir / "docs" / "README.md").write_text("# changed\n")
    assert read_bundle_info(copy_dir).model_hash != status["model_hash"]


def test_yaml_unet_bundle_with_reorientation_resampling_and_window_scaling(tmp_path: Path, phantom: np.ndarray) -> None:
    """A UNet bundle in YAML in the layout of MONAI's segmentation template: ``$@transforms``, keys that are
    expressions (never read), CT-style ScaleIntensityRanged run by the model, softmax + argmax, safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    bundle = tmp_path / "unet_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    save_file(net.state_dict(), str(bundle / "models" / "model.safetensors"))
    (bundle / "configs" / "inference.yaml").write_text("""
imports:
- $import torch
image: $monai.utils.CommonKeys.IMAGE
pred: $monai.utils.CommonKeys.PRED
num_classes: 3
device: $torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
network_def:
  _target_: monai.networks.nets.UNet
  spatial_dims: 3
  in_channels: 1
  out_channels: '@num_classes'
  channels: [8, 16, 32]
  strides: [2, 2]
  num_res_units: 1
network: $@network_def.to(@device)
transforms:
- _target_: LoadImaged
  keys: '@image'
- _target_: EnsureChannelFirstd
  keys: '@image'
- _target_: Orientationd
  keys: '@image'
  axcodes: RAS
- _target_: Spacingd
  keys: '@image'
  pixdim: [1.5, 1.5, 2.0]
  mode: bilinear
- _target_: ScaleIntensityRanged
  keys: '@image'
  a_min: 0
  a_max: 800
  b_min: 0.0
  b_max: 1.0
  clip: true
- _target_: EnsureTyped
  keys: '@image'
preprocessing:
  _target_: Compose
  transforms: $@transforms
inferer:
  _target_: SlidingWindowInferer
  roi_size: [32, 32, 32]
  sw_batch_size: 2
  overlap: 0.25
  mode: gaussian
postprocessing:
  _target_: Compose
  transforms:
  - _target_: Activationsd
    keys: '@pred'
    softmax: true
  - _target_: AsDiscreted
    keys: '@pred'
    argmax: true
  - _target_: SaveImaged
    keys: '@pred'
    output_dtype: $None
""")
    (bundle / "configs" / "metadata.json").write_text(json.dumps({
        "version": "1.0.0", "name": "Tumour UNet (T1c only)",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "channel_def": {"0": "T1-Gd"}}},
            "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "necrosis",
                                                                     "2": "enhancing tumor"}}}}}))
    model = load_bundle(bundle, device="cpu")
    assert model.roles == ("t1c",)
    assert model.preprocessing.axcodes == "RAS" and model.preprocessing.pixdim == (1.5, 1.5, 2.0)
    assert model.preprocessing.normalisation == "none"  # the window scaling is the model's own step
    assert model.postprocessing.activation == "softmax"
    assert [(r.index, r.name) for r in model.postprocessing.regions] == [(1, "necrosis"), (2, "enhancing tumour")]
    assert model.roi_size == (32, 32, 32) and model.overlap == 0.25
    image = phantom[:1]
    probs = model.infer(image)
    assert probs.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)

    from monai.inferers import sliding_window_inference

    scaled = np.clip(image / 800.0, 0.0, 1.0).astype(np.float32)
    net.eval()
    with torch.inference_mode():
        expected = torch.softmax(sliding_window_inference(torch.from_numpy(scaled)[None], (32, 32, 32), 2, net,
                                                          overlap=0.25, mode="gaussian"), 1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def _refused(bundle: Path) -> str:
    entry = load_model(bundle, device="cpu", warmup=False)
    assert entry.loaded is False and entry.model is None
    assert entry.status()["loaded"] is False and entry.status()["reason"] == entry.error
    return str(entry.error)


def test_an_expression_in_what_the_node_reads_is_refused_and_never_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "expression-ran"
    config = copy.deepcopy(BRATS_INFERENCE)
    config["network_def"]["in_channels"] = f"$__import__('pathlib').Path({str(sentinel)!r}).touch() or 4"
    bundle = write_bundle(tmp_path / "models", "bundle_expr", inference=config)
    reason = _refused(bundle)
    assert "network_def.in_channels is the expression" in reason and "never evaluates" in reason
    assert not sentinel.exists()
    # the same through a reference: "@channels" pointing to an expression
    config = copy.deepcopy(BRATS_INFERENCE)
    config["channels"] = f"$open({str(sentinel)!r}, 'w').close()"
    config["inferer"]["roi_size"] = "@channels"
    reason = _refused(write_bundle(tmp_path / "models", "bundle_expr_ref", inference=config))
    assert "inferer" in reason and "expression" in reason and not sentinel.exists()


def test_unknown_targets_and_transforms_are_refused_by_name(tmp_path: Path) -> None:
    sentinel = tmp_path / "imported"
    config = copy.deepcopy(BRATS_INFERENCE)
    config["network_def"] = {**BRATS_NET, "_target_": "scripts.net.MyNet"}
    bundle = write_bundle(tmp_path / "models", "bundle_scripts", inference=config)
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("")
    (bundle / "scripts" / "net.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    assert "'scripts.net.MyNet' lies outside monai.networks.nets" in _refused(bundle)
    assert not sentinel.exists()

    config = copy.deepcopy(BRATS_INFERENCE)
    config["network_def"] = {"_target_": "VNet", "in_channels": 4, "out_channels": 3}
    assert "network 'VNet' is not one the node builds" in _refused(write_bundle(tmp_path / "models", "vnet", inference=config))

    config = copy.deepcopy(BRATS_INFERENCE)
    config["postprocessing"]["transforms"].insert(2, {"_target_": "KeepLargestConnectedComponentd", "keys": "pred"})
    reason = _refused(write_bundle(tmp_path / "models", "cc", inference=config))
    assert "transform 'KeepLargestConnectedComponentd' is not one the node can map" in reason

    config = copy.deepcopy(BRATS_INFERENCE)
    config["inferer"] = {"_target_": "SaliencyInferer", "cam_name": "GradCAM", "target_layers": "x"}
    assert "inferer 'SaliencyInferer'" in _refused(write_bundle(tmp_path / "models", "inferer", inference=config))


def test_a_pickled_object_as_model_pt_is_refused_and_never_executed(tmp_path: Path) -> None:
    sentinel = tmp_path / "code-was-executed"
    bundle = write_bundle(tmp_path / "models", "bundle_pickle")
    torch.save(_Trap(sentinel), bundle / "models" / "model.pt")
    with zipfile.ZipFile(bundle / "models" / "model.pt") as archive:
        pickle_bytes = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickle_bytes)]
    assert any(arg is not None and "touch" in str(arg) for _, arg in ops)  # the file does carry the call
    # control: what unpickling the trap would call does create its file (run here directly, not by unpickling)
    call, args = _Trap(tmp_path / "control").__reduce__()
    call(*args)
    assert (tmp_path / "control").exists()
    reason = _refused(bundle)
    assert "weights_only=True" in reason and "never executed" in reason
    assert not sentinel.exists()


def test_checkpoint_variants_and_mismatched_weights(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "models", "wrapped")
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({"model": state}, bundle / "models" / "model.pt")  # MONAI CheckpointSaver with several objects
    assert load_model(bundle, device="cpu", warmup=False).loaded
    torch.manual_seed(0)
    small = SegResNet(init_filters=8, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], in_channels=4, out_channels=3)
    bundle = write_bundle(tmp_path / "models", "mismatch", network=small)
    assert "does not fit the network of network_def" in _refused(bundle)
    bundle = write_bundle(tmp_path / "models", "torchscript")
    (bundle / "models" / "model.pt").rename(bundle / "models" / "model.ts")
    assert "TorchScript" in _refused(bundle)


def test_inputs_the_node_cannot_name_need_neuronova_json(tmp_path: Path) -> None:
    meta = copy.deepcopy(BRATS_METADATA)
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "DWI", "1": "T1", "2": "T2", "3": "FLAIR"}
    bundle = write_bundle(tmp_path / "models", "dwi", metadata=meta)
    assert "['DWI'] are not series roles" in _refused(bundle)
    (bundle / "neuronova.json").write_text(json.dumps({"roles": ["t1c", "t1", "t2", "flair"],
                                                       "optional_roles": ["t1"]}))
    model = load_model(bundle, device="cpu", warmup=False).model
    assert isinstance(model, VolumeModel) and model.optional_roles == frozenset({"t1"})
    (bundle / "neuronova.json").write_text(json.dumps({"roles": ["t1c"], "colour": "red"}))
    assert "colour" in _refused(bundle)


def test_registry_keeps_loading_the_other_models(tmp_path: Path, brats: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(brats, root / "brats_mri_segmentation")
    config = copy.deepcopy(BRATS_INFERENCE)
    config["preprocessing"]["transforms"].append({"_target_": "RandFlipd", "keys": "image", "prob": 0.5})
    write_bundle(root, "broken_bundle", inference=config)
    (root / "not_a_model").mkdir()
    registry = ModelRegistry.load(root, device="cpu", warmup=False)
    status = registry.status()
    assert status["brats_mri_segmentation"]["loaded"] is True
    broken = status["broken_bundle"]
    assert broken["loaded"] is False and "RandFlipd" in broken["reason"]
    assert broken["name"] == "BraTS MRI segmentation" and broken["version"] == "0.5.2" and len(broken["model_hash"]) == 64
    assert "not_a_model" not in status
    assert isinstance(registry.get("brats_mri_segmentation", VolumeSegmenter), VolumeModel)
    with pytest.raises(ModelNotLoaded, match="RandFlipd"):
        registry.get("broken_bundle")


def test_study_models_load_lazily_and_a_missing_module_is_a_reason(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "study_model"
    model_dir.mkdir()
    (model_dir / "metadata.json").write_text(json.dumps({
        "id": "study_model", "name": "Study model", "version": "0.1", "task": "segmentation",
        "labels": {"1": "whole tumour"}, "input": {"roles": ["t1c", "flair"]}, "output": {"activation": "sigmoid"},
        "intended_use": "tests"}))
    monkeypatch.setitem(sys.modules, "neuronova.models.multiseq", None)  # as if not built yet
    entry = load_model(model_dir, device="cpu", warmup=False)
    assert not entry.loaded and "study segmentation models are not available" in str(entry.error)
    assert entry.status()["layout"] == "node_study" and entry.status()["name"] == "Study model"


def _mutate(bundle: Path, change: str, tmp_path: Path) -> None:
    configs = bundle / "configs"
    config = json.loads((configs / "inference.json").read_text())
    if change == "metadata not json":
        (configs / "metadata.json").write_text("{not json")
    elif change == "config not a mapping":
        (configs / "inference.json").write_text("[]")
    elif change == "no network_def":
        del config["network_def"]
    elif change == "roi not numbers":
        config["roi"] = "abc"
    elif change == "reference cycle":
        config["roi"], config["roi2"] = "@roi2", "@roi"
    elif change == "unknown reference":
        config["inferer"]["overlap"] = "@nowhere"
    elif change == "pinned digest differs":
        (bundle / "neuronova.json").write_text(json.dumps({"files": {"models/model.pt": "0" * 64}}))
    elif change == "link outside":
        (tmp_path / "outside.txt").write_text("secret")
        (bundle / "docs" / "outside.txt").symlink_to(tmp_path / "outside.txt")
    if change not in ("metadata not json", "config not a mapping"):
        (configs / "inference.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("change", "reason"), [
    ("metadata not json", "metadata.json is not valid JSON"),
    ("config not a mapping", "must hold a mapping at the top"),
    ("no network_def", "network is the expression '$@network_def.to(@device)'"),
    ("roi not numbers", "roi_size must be a number or three numbers"),
    ("reference cycle", "reference cycle"),
    ("unknown reference", "reference to 'nowhere'"),
    ("pinned digest differs", "neuronova.json says 000000000000"),
    ("link outside", "links outside the bundle directory"),
])
def test_malformed_bundles_are_refused_with_the_reason(tmp_path: Path, brats: Path, change: str, reason: str) -> None:
    bundle = tmp_path / "models" / "brats_mri_segmentation"
    shutil.copytree(brats, bundle)
    _mutate(bundle, change, tmp_path)
    assert reason in _refused(bundle)
