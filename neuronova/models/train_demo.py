"""Train the three demo models on synthetic phantoms, reproducibly, and write their model directories.

``main(out_dir, seed=0)`` takes about 6 minutes on two free CPU cores for segmentation (1000 steps) and
biomarkers (1 s), and about 10 more on a shared two-core machine for the CT classifier (184 phantoms, 20
epochs on one thread, then calibration and held-out phantoms); ``quick=True`` trains tiny versions in about
20 s of CPU (for tests: the files, export and loading are real, the quality is not). Fixed seeds and a fixed
torch thread count make a re-run on the same kind of machine give the same weights.

Each model directory gets ``metadata.json`` with the quality measured on held-out phantoms that training never
saw (different seeds), and networks get ``model.onnx`` (checked against torch, max |difference| recorded) and
``weights.npz``; the CT classifier also ``calibration.json`` (temperature and indeterminate threshold, fitted
on a calibration split of its own seeds).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import sklearn
import torch
from monai.losses import DiceCELoss
from torch import nn
from tqdm import tqdm

import neuronova
from neuronova.models import architectures, biomarkers
from neuronova.models.base import ONNX_FILE, WEIGHTS_FILE
from neuronova.models.classification import (
    CALIBRATION_FILE,
    DEFAULT_SIZE,
    INDETERMINATE,
    aggregate_slices,
    brain_slice_mask,
    choose_indeterminate_threshold,
    expected_calibration_error,
    fit_temperature,
    preprocess_ct_slices,
    softmax,
)
from neuronova.models.metadata import Architecture, ModelMetadata, sha256_file, write_metadata
from neuronova.models.registry import MODEL_IDS, load_model
from neuronova.models.runtime import save_weights
from neuronova.models.segmentation import DEFAULT_GRID, DEFAULT_OVERLAP, labels_to_grid, preprocess_mr
from neuronova.phantoms import CT_CLASSES, TUMOUR_LABELS, Phantom, make_ct_phantom, make_mr_phantom
from neuronova.phantoms.ct_anatomy import VARIANTS, make_ct_anatomy_phantom

logger = logging.getLogger(__name__)

TRAIN_THREADS = 2
INTENDED_USE = ("Demonstration and integration testing of the NeuroNova node on synthetic phantoms. Trained only on "
                "synthetic data; not validated on patient images; not for clinical use.")
# Seed ranges: training and held-out phantoms never share a seed.
_TRAIN_BASE, _HELDOUT_BASE = 100_000, 900_000


def _set_determinism(seed: int) -> None:
    # torch.use_deterministic_algorithms(True) made a 3D UNet step 3x slower on CPU; the CPU kernels used here
    # are deterministic at a fixed thread count already (tests check that two runs give identical weights).
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)


def _framework() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__, "neuronova": neuronova.__version__}


def strip_provenance(path: Path) -> None:
    """Drop the exporter's per-node stack traces and metadata: they name files of the machine that exported."""
    model = onnx.load(str(path))
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
        for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
            value.doc_string = ""
            if hasattr(value, "metadata_props"):
                del value.metadata_props[:]
    model.doc_string = ""
    del model.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool) -> float:
    """Export to ONNX and return the max |ORT - torch| on ``example`` (raises if they disagree)."""
    module.eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["logits"], dynamo=True,
                          external_data=False, dynamic_shapes=dynamic, optimize=True)
    logger.debug("onnx export: %s", chatter.getvalue())
    strip_provenance(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = module(example).numpy()
    actual = session.run(None, {"input": example.numpy()})[0]
    diff = float(np.abs(actual - expected).max())
    # float32 kernels differ in summation order: allow 1e-3 on logits of order 1, relatively more on large ones
    # (a trained UNet's logits reach about 50). The predicted classes must agree exactly.
    scale = max(1.0, float(np.abs(expected).max()) / 10.0)
    if diff > 1e-3 * scale or not np.array_equal(actual.argmax(1), expected.argmax(1)):
        raise RuntimeError(f"ONNX Runtime and torch disagree by {diff:.2e} (logits up to "
                           f"{np.abs(expected).max():.1f}) on {path.name}")
    return diff


def _write_network(model_dir: Path, module: nn.Module, example: torch.Tensor, *, dynamic_batch: bool) -> tuple[dict[str, str], float]:
    model_dir.mkdir(parents=True, exist_ok=True)
    save_weights(module, model_dir / WEIGHTS_FILE)
    diff = export_onnx(module, example, model_dir / ONNX_FILE, dynamic_batch=dynamic_batch)
    return {name: sha256_file(model_dir / name) for name in (ONNX_FILE, WEIGHTS_FILE)}, diff


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * int((a & b).sum()) / denominator


# ---- MRI segmentation -------------------------------------------------------------------------------------

def _random_mr_shape(rng: np.random.Generator, quick: bool) -> tuple[int, int, int]:
    """Between the model grid and twice it, so training sees the averaging that inference does."""
    if quick:
        return 40, 96, 96
    xy = int(rng.integers(128, 257))
    return int(rng.integers(64, 161)), xy, xy


def _crop(volume: np.ndarray, labels: np.ndarray, patch: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tumour = np.argwhere(labels > 0)
    if len(tumour) and rng.random() < 0.7:
        centre = tumour[rng.integers(len(tumour))]
    else:
        centre = np.array([rng.integers(n) for n in labels.shape])
    start = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, labels.shape, strict=True)]
    box = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    return volume[box], labels[box]


def train_segmentation(model_dir: Path, *, seed: int, quick: bool) -> ModelMetadata:
    cfg = {"n_train": 3, "n_heldout": 1, "steps": 4, "batch": 1, "patch": [32, 48, 48], "lr": 3e-3,
           "heldout_shape": [40, 96, 96]} if quick else {
        "n_train": 40, "n_heldout": 8, "steps": 1000, "batch": 2, "patch": [48, 80, 80], "lr": 1e-2,
        "heldout_shape": [155, 256, 256]}
    grid = DEFAULT_GRID
    params = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [8, 16, 32, 64],
              "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance"}
    _set_determinism(seed)
    rng = np.random.default_rng([seed, 1])
    images, targets = [], []
    for i in tqdm(range(cfg["n_train"]), desc="mri_segmentation: phantoms", leave=False):
        phantom = make_mr_phantom(_TRAIN_BASE + seed * 1000 + i, shape=_random_mr_shape(rng, quick))
        images.append(preprocess_mr(phantom.image, grid)[0, 0])
        targets.append(labels_to_grid(phantom.labels, grid, 4))

    module = architectures.build("monai.networks.nets.UNet", params)
    optimiser = torch.optim.AdamW(module.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"], total_steps=cfg["steps"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    module.train()
    losses: list[float] = []
    progress = tqdm(range(cfg["steps"]), desc="mri_segmentation: training")
    for step in progress:
        xs, ys = [], []
        for _ in range(cfg["batch"]):
            k = int(rng.integers(len(images)))
            x, y = _crop(images[k], targets[k], cfg["patch"], rng)
            if rng.random() < 0.5:  # left-right mirror: the head is symmetric, tumours are not
                x, y = x[..., ::-1], y[..., ::-1]
            x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        batch_x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        batch_y = torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))
        optimiser.zero_grad()
        loss = loss_fn(module(batch_x), batch_y)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 20 == 19:
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")

    patch = [int(v) for v in cfg["patch"]]
    example = torch.from_numpy(np.stack([_crop(images[0], targets[0], patch, rng)[0] for _ in range(2)])[:, None].copy())
    files, diff = _write_network(model_dir, module, example, dynamic_batch=True)
    labels = {str(k): v for k, v in TUMOUR_LABELS.items()}
    metadata = ModelMetadata(
        id="mri_segmentation", name="MRI brain tumour segmentation (demo)", version="1.0.0-demo", task="segmentation",
        description="3D segmentation of enhancing tumour, necrotic core and edema on T1-like MR.",
        labels=labels,
        input={"modality": "MR", "sequence": "T1-weighted (post-contrast-like phantom)", "channels": 1,
               "orientation": "any single-frame stack; array axes (z, y, x) of the loaded series",
               "spacing": "any; the whole volume is resampled to the grid",
               "size": list(grid), "resample": "area average to size; labels back by nearest neighbour",
               "window": patch, "overlap": DEFAULT_OVERLAP,
               "inference": "sliding windows over the grid, Gaussian blending (the training patch size)",
               "normalisation": {"method": "zscore over voxels above 0.1 x 99th percentile"}},
        output={"type": "label volume in source geometry", "dtype": "uint8", "labels": labels,
                "volumes": "mL per label and whole tumour"},
        architecture=Architecture(name="monai.networks.nets.UNet", params=params),
        training={"data": "synthetic MR head phantoms (neuronova.phantoms.make_mr_phantom)", "seed": seed,
                  "train_seeds": [_TRAIN_BASE + seed * 1000, _TRAIN_BASE + seed * 1000 + cfg["n_train"] - 1],
                  "heldout_seeds": [_HELDOUT_BASE + seed * 1000, _HELDOUT_BASE + seed * 1000 + cfg["n_heldout"] - 1],
                  "loss": "DiceCE (softmax, foreground Dice)", "optimiser": "AdamW + one-cycle",
                  "final_loss": round(float(np.mean(losses[-20:])), 4), **cfg, "quick": quick},
        intended_use=INTENDED_USE, files=files, framework=_framework(),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_metadata(model_dir, metadata)

    # Held-out quality through the production path (ONNX Runtime, resample back to source geometry).
    entry = load_model(model_dir, device="cpu")
    assert entry.model is not None, entry.error
    whole, per_label = [], {k: [] for k in TUMOUR_LABELS}
    for i in tqdm(range(cfg["n_heldout"]), desc="mri_segmentation: held-out", leave=False):
        phantom = make_mr_phantom(_HELDOUT_BASE + seed * 1000 + i, shape=tuple(cfg["heldout_shape"]),
                                  n_tumours=1 + i % 3)
        predicted = entry.model.predict(phantom.image)  # type: ignore[attr-defined]
        whole.append(_dice(predicted > 0, phantom.labels > 0))
        for k in TUMOUR_LABELS:
            if (phantom.labels == k).any():
                per_label[k].append(_dice(predicted == k, phantom.labels == k))
    metadata.metrics = {
        "heldout_phantoms": cfg["n_heldout"],
        "dice_whole_tumour_mean": round(float(np.mean(whole)), 4),
        "dice_whole_tumour_min": round(float(np.min(whole)), 4),
        "dice_per_label_mean": {TUMOUR_LABELS[k]: round(float(np.mean(v)), 4) for k, v in per_label.items() if v},
        "onnx_max_abs_diff": diff,
    }
    write_metadata(model_dir, metadata)
    return metadata


# ---- CT classification ------------------------------------------------------------------------------------
# Two generators: head.py's procedural head (as the first demo model) and ct_anatomy's varied normal anatomy,
# on which a held-out normal head had been called "Glioma". Seed ranges never overlap between training,
# calibration and held-out phantoms, nor between the generators.
_CT_ANATOMY_TRAIN, _CT_CALIBRATION = 200_000, 600_000
_CT_TRAIN_THREADS = 1


def _labelled_slices(phantom: Phantom, cls: str, rng: np.random.Generator, n_tumour: int,
                     n_normal: int) -> tuple[list[np.ndarray], list[int]]:
    """A CT phantom's brain slices (HU) labelled by what they show: the class where the tumour is at least 40 %
    of its largest cross-section, "No Tumor" where there is none, not even on the next slice (partial volume);
    slices in between are left out. Brain slices are those the model classifies (``brain_slice_mask``)."""
    area = (phantom.labels > 0).sum(axis=(1, 2))
    brain = brain_slice_mask(phantom.image, phantom.spacing[1] * phantom.spacing[2])
    slices, labels = [], []
    if area.max() > 0:
        showing = np.flatnonzero(area >= 0.4 * area.max())
        for z in rng.permutation(showing)[:n_tumour]:
            slices.append(phantom.image[z])
            labels.append(CT_CLASSES.index(cls))
    near = np.convolve(area > 0, np.ones(3), mode="same") > 0
    clear = np.flatnonzero(~near & brain)
    for z in rng.permutation(clear)[:n_normal]:
        slices.append(phantom.image[z])
        labels.append(CT_CLASSES.index("No Tumor"))
    return slices, labels


def _ct_phantom(generator: str, seed: int, cls: str, rng: np.random.Generator, *, quick: bool,
                variant: str = "random", matrix: int | None = None) -> Phantom:
    if generator == "head":
        shape = (int(rng.integers(24, 49)), 256, 256) if not quick else (24, 96, 96)
        return make_ct_phantom(seed, shape=shape, tumour_class=cls)
    matrix = matrix or (96 if quick else int(rng.choice([160, 192, 224])))
    return make_ct_anatomy_phantom(seed, matrix=matrix, tumour_class=cls, variant=variant)


def _slice_counts(cls: str) -> tuple[int, int]:
    # a pituitary tumour shows on fewer slices: take more of them; normal heads give more normal slices
    return (6 if cls == "Pituitary" else 4), (8 if cls == "No Tumor" else 3)


def _ct_dataset(base: dict[str, int], per_class: dict[str, dict[str, int]], rng: np.random.Generator, *,
                quick: bool, label: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Network inputs and labels of slices from ``per_class[generator][class]`` phantoms of each generator."""
    xs: list[np.ndarray] = []
    ys: list[int] = []
    phantoms = {}
    jobs = [(g, c, cls, i) for g in per_class for c, cls in enumerate(CT_CLASSES) for i in range(per_class[g][cls])]
    for g, c, cls, i in tqdm(jobs, desc=f"ct_classification: {label} phantoms", leave=False):
        phantom = _ct_phantom(g, base[g] + c * 100 + i, cls, rng, quick=quick)
        s, y = _labelled_slices(phantom, cls, rng, *_slice_counts(cls))
        # windowed and resized at once: a list of 256 x 256 HU slices would cost 20 times the memory
        if s:
            xs.append(preprocess_ct_slices(np.stack(s), size=DEFAULT_SIZE))
        ys += y
        phantoms[g] = phantoms.get(g, 0) + 1
    return np.concatenate(xs), np.array(ys), phantoms


def _study_logits(model: Any, phantom: Phantom) -> np.ndarray:
    """Logits of the slices ``classify_volume`` would classify (ONNX Runtime), in slice order."""
    slices = np.flatnonzero(brain_slice_mask(phantom.image, phantom.spacing[1] * phantom.spacing[2]))
    if slices.size == 0:
        slices = np.arange(phantom.image.shape[0])
    return np.concatenate([model.run(model.preprocess_slices(phantom.image[slices[i:i + 32]]))
                           for i in range(0, len(slices), 32)])


def _study_outcome(logits: np.ndarray, temperature: float, threshold: float) -> tuple[np.ndarray, str]:
    """Study probabilities and outcome, as ``ClassificationModel.classify_volume`` computes them."""
    study, _ = aggregate_slices(softmax(logits, temperature), list(CT_CLASSES))
    best = int(np.argmax(study))
    return study, (INDETERMINATE if study[best] < threshold else CT_CLASSES[best])


def _study_report(studies: list[tuple[str, np.ndarray]], temperature: float, threshold: float) -> dict[str, Any]:
    """Accuracy, outcome counts and (no tumour) false-positive rate of (true class, slice logits) studies."""
    outcomes = [_study_outcome(logits, temperature, threshold) for _, logits in studies]
    truth = np.array([CT_CLASSES.index(cls) for cls, _ in studies])
    probabilities = np.stack([p for p, _ in outcomes])
    counts: dict[str, dict[str, int]] = {}
    for t, (_, outcome) in zip(truth, outcomes, strict=True):
        row = counts.setdefault(CT_CLASSES[t], {})
        row[outcome] = row.get(outcome, 0) + 1
    normal = truth == CT_CLASSES.index("No Tumor")
    tumour_call = np.array([o in CT_CLASSES and o != "No Tumor" for _, o in outcomes])
    report: dict[str, Any] = {
        "studies": len(studies),
        "accuracy": round(float((probabilities.argmax(1) == truth).mean()), 4),
        "outcome_accuracy": round(float(np.mean([o == CT_CLASSES[t] for t, (_, o) in zip(truth, outcomes, strict=True)])), 4),
        "indeterminate_rate": round(float(np.mean([o == INDETERMINATE for _, o in outcomes])), 4),
        "outcome_counts": counts,  # true class -> outcome -> studies
    }
    if normal.any():
        report["normal_false_positive_rate"] = round(float(tumour_call[normal].mean()), 4)
    if (~normal).any():
        report["tumour_outcome_accuracy"] = round(float(np.mean(
            [o == CT_CLASSES[t] for t, (_, o), n in zip(truth, outcomes, normal, strict=True) if not n])), 4)
    return report


def _held_out_studies(model: Any, seed: int, rng: np.random.Generator, cfg: dict[str, Any], quick: bool
                      ) -> tuple[dict[str, list[tuple[str, np.ndarray]]], np.ndarray, np.ndarray]:
    """Slice logits of the held-out studies, by set: the first demo's head.py studies, varied normal heads per
    anatomy variant, tumours on varied anatomy, and head.py normal heads at other matrix and slice spacing;
    and the logits and labels of their labelled slices (as training labels them)."""
    base = _HELDOUT_BASE + seed * 1000
    jobs: list[tuple[str, str, Any]] = []
    for c, cls in enumerate(CT_CLASSES):
        for i in range(cfg["heldout_per_class"]):
            jobs.append(("head", cls, lambda c=c, i=i, cls=cls: make_ct_phantom(
                base + 500 + c * 100 + i, shape=(int(rng.integers(24, 49)), 256, 256) if not quick else (24, 96, 96),
                tumour_class=cls)))
    matrix = 96 if quick else 256
    for v, variant in enumerate(VARIANTS):
        for i in range(cfg["heldout_normals_per_variant"]):
            jobs.append((f"anatomy_normal_{variant}", "No Tumor", lambda v=v, i=i, variant=variant: make_ct_anatomy_phantom(
                base + 20_000 + v * 100 + i, matrix=matrix, tumour_class="No Tumor", variant=variant)))
    for c, cls in enumerate(CT_CLASSES[:3]):
        for i in range(cfg["heldout_anatomy_tumours_per_class"]):
            jobs.append(("anatomy_tumour", cls, lambda c=c, i=i, cls=cls: make_ct_anatomy_phantom(
                base + 30_000 + c * 100 + i, matrix=matrix, tumour_class=cls)))
    for i in range(cfg["heldout_head_other_params"]):
        # 40 slices at a 512 matrix, or thin slices at 256: parameters the head.py training never used
        shape = ((40, 512, 512), (64, 256, 256))[i % 2] if not quick else (30, 128, 128)
        spacing = (2.5, 0.9, 0.9) if i % 2 else None
        jobs.append(("head_other_params_normal", "No Tumor", lambda i=i, shape=shape, spacing=spacing: make_ct_phantom(
            base + 40_000 + i, shape=shape, spacing=spacing, tumour_class="No Tumor")))
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    slice_logits, slice_labels = [], []
    for name, cls, make in tqdm(jobs, desc="ct_classification: held-out studies", leave=False):
        phantom = make()
        sets.setdefault(name, []).append((cls, _study_logits(model, phantom)))
        slices, labels = _labelled_slices(phantom, cls, rng, *_slice_counts(cls))
        if slices:
            slice_logits.append(model.run(preprocess_ct_slices(np.stack(slices), size=DEFAULT_SIZE)))
            slice_labels += labels
    return sets, np.concatenate(slice_logits), np.array(slice_labels)


def train_classification(model_dir: Path, *, seed: int, quick: bool) -> ModelMetadata:
    cfg: dict[str, Any] = {
        "per_class": {"head": 1, "anatomy": 1}, "normal_anatomy_phantoms": 1, "calibration_per_class": {"head": 1, "anatomy": 1},
        "heldout_per_class": 1, "heldout_normals_per_variant": 1, "heldout_anatomy_tumours_per_class": 1,
        "heldout_head_other_params": 1, "epochs": 1, "batch": 16, "lr": 3e-3} if quick else {
        "per_class": {"head": 20, "anatomy": 20}, "normal_anatomy_phantoms": 44,
        "calibration_per_class": {"head": 3, "anatomy": 6}, "heldout_per_class": 10,
        "heldout_normals_per_variant": 3, "heldout_anatomy_tumours_per_class": 4, "heldout_head_other_params": 4,
        "epochs": 24, "batch": 32, "lr": 3e-3}
    # The first demo's network, trained on one thread (on a shared two-core machine twice as fast as two).
    # Narrower ones underfitted the varied anatomy: widths 8-64 for 8 epochs reached a held-out slice accuracy
    # of 0.74, widths 12-96 for 20 epochs 0.85 (study accuracy 0.70, gliomas missed).
    params = {"num_classes": len(CT_CLASSES), "in_channels": 1, "widths": [16, 32, 64, 128], "blocks": 1}
    _set_determinism(seed)
    torch.set_num_threads(_CT_TRAIN_THREADS)
    rng = np.random.default_rng([seed, 2])

    def counts(per: dict[str, int], normals: int | None = None) -> dict[str, dict[str, int]]:
        return {g: {cls: (normals if normals is not None and g == "anatomy" and cls == "No Tumor" else n)
                    for cls in CT_CLASSES} for g, n in per.items()}

    train_x, train_y, train_phantoms = _ct_dataset(
        {"head": _TRAIN_BASE + seed * 1000, "anatomy": _CT_ANATOMY_TRAIN + seed * 1000},
        counts(cfg["per_class"], cfg["normal_anatomy_phantoms"]), rng, quick=quick, label="training")

    module = architectures.build("neuronova.SmallResNet", params)
    optimiser = torch.optim.AdamW(module.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_x) / cfg["batch"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
    # Unweighted: class weights made normal slices look like tumours, and a series is only as specific as its
    # least specific slice. Many normal slices (3 per tumour phantom, 8 per normal one) teach specificity.
    class_counts = np.bincount(train_y, minlength=len(CT_CLASSES))
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    progress = tqdm(total=cfg["epochs"] * steps_per_epoch, desc="ct_classification: training")
    for _ in range(cfg["epochs"]):
        order = rng.permutation(len(train_x))
        for b in range(steps_per_epoch):
            idx = order[b * cfg["batch"]:(b + 1) * cfg["batch"]]
            x = train_x[idx].copy()
            flip = rng.random(len(idx)) < 0.5
            x[flip] = x[flip][..., ::-1]
            shift = rng.integers(-6, 7, size=2)
            x = np.roll(x, tuple(int(s) for s in shift), axis=(2, 3))
            x = x + rng.normal(0, 0.08, x.shape).astype(np.float32)
            optimiser.zero_grad()
            loss = loss_fn(module(torch.from_numpy(x.astype(np.float32))), torch.from_numpy(train_y[idx]))
            loss.backward()
            optimiser.step()
            schedule.step()
            progress.update()
    progress.close()
    module.eval()
    example = torch.from_numpy(train_x[order[:4]].copy())
    del train_x

    files, diff = _write_network(model_dir, module, example, dynamic_batch=True)
    metadata = ModelMetadata(
        id="ct_classification", name="CT brain tumour classification (demo)", version="1.1.0-demo",
        task="classification", description="Glioma / Meningioma / Pituitary / No Tumor on non-contrast head CT.",
        labels=list(CT_CLASSES),
        input={"modality": "CT", "orientation": "axial slices", "channels": 1, "size": [DEFAULT_SIZE, DEFAULT_SIZE],
               "window": {"center": 40, "width": 80}, "normalise": {"mean": 0.5, "std": 0.25},
               "spacing": "any; each slice padded to a square and resized (antialiased bilinear)",
               "images": "PNG/JPEG grayscale already brain-windowed (0-255) enter after windowing"},
        output={"type": "class probabilities (softmax of logits / temperature, see calibration.json)",
                "classes": list(CT_CLASSES),
                "series": "per brain slice, aggregated (see neuronova.models.classification.aggregate_slices); "
                          "the driving slice is the one with the strongest tumour evidence",
                "indeterminate": f"outcome '{INDETERMINATE}' when the calibrated confidence is below "
                                 "calibration.json's indeterminate_below"},
        architecture=Architecture(name="neuronova.SmallResNet", params=params),
        training={"data": "axial slices of synthetic CT heads: the procedural head (neuronova.phantoms.make_ct_phantom)"
                          " and varied normal anatomy with the same tumour classes "
                          "(neuronova.phantoms.ct_anatomy.make_ct_anatomy_phantom)",
                  "seed": seed, "train_phantoms": train_phantoms, "train_slices": int(class_counts.sum()),
                  "train_slices_per_class": dict(zip(CT_CLASSES, class_counts.tolist(), strict=True)),
                  "loss": "cross-entropy",
                  "augmentation": "mirror, shift +-6 px, noise", "optimiser": "AdamW + one-cycle", **cfg,
                  "quick": quick},
        intended_use=INTENDED_USE, files=files, framework=_framework(),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_metadata(model_dir, metadata)
    entry = load_model(model_dir, device="cpu")
    assert entry.model is not None, entry.error
    model: Any = entry.model

    # Calibration split (its own seeds): the phantoms' labelled slices fit the temperature; the same phantoms,
    # classified as studies, pick the indeterminate threshold.
    calibration_logits_list, calibration_labels, calibration_studies = [], [], []
    jobs = [(g, c, cls, i) for g, per in counts(cfg["calibration_per_class"]).items()
            for c, cls in enumerate(CT_CLASSES) for i in range(per[cls])]
    for g, c, cls, i in tqdm(jobs, desc="ct_classification: calibration phantoms", leave=False):
        base = _CT_CALIBRATION + (50_000 if g == "anatomy" else 0) + seed * 1000
        phantom = _ct_phantom(g, base + c * 100 + i, cls, rng, quick=quick)
        calibration_studies.append((cls, _study_logits(model, phantom)))
        slices, labels = _labelled_slices(phantom, cls, rng, *_slice_counts(cls))
        if slices:
            calibration_logits_list.append(model.run(preprocess_ct_slices(np.stack(slices), size=DEFAULT_SIZE)))
            calibration_labels += labels
    calibration_logits, calibration_y = np.concatenate(calibration_logits_list), np.array(calibration_labels)
    temperature = fit_temperature(calibration_logits, calibration_y)
    study_probs = np.stack([_study_outcome(logits, temperature, 0.0)[0] for _, logits in calibration_studies])
    study_truth = np.array([CT_CLASSES.index(cls) for cls, _ in calibration_studies])
    threshold = choose_indeterminate_threshold(study_probs.max(1), study_probs.argmax(1) == study_truth)
    calibration = {"method": "temperature scaling (logits / temperature, then softmax)",
                   "temperature": round(temperature, 4), "indeterminate_below": threshold,
                   "threshold_rule": "lowest of 0.50, 0.55, ... 0.95 at which the calibration studies kept "
                                     "(confidence >= threshold) are >= 95 % correct; never below 0.5, where the "
                                     "calibrated top class is more likely wrong than right"}
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")
    metadata.files[CALIBRATION_FILE] = sha256_file(model_dir / CALIBRATION_FILE)
    write_metadata(model_dir, metadata)

    # Held-out quality through the production path: ONNX Runtime logits, the brain-slice mask, aggregation.
    entry = load_model(model_dir, device="cpu")
    assert entry.model is not None, entry.error
    model = entry.model
    sets, test_logits, test_y = _held_out_studies(model, seed, rng, cfg, quick)
    all_studies = [s for studies in sets.values() for s in studies]
    every_normal = [s for name, studies in sets.items() for s in studies if s[0] == "No Tumor" and name != "head"]

    def ece_studies(temp: float) -> float:
        probs = np.stack([_study_outcome(logits, temp, 0.0)[0] for _, logits in all_studies])
        return round(expected_calibration_error(probs, np.array([CT_CLASSES.index(c) for c, _ in all_studies])), 4)

    head = _study_report(sets["head"], temperature, threshold)
    metadata.metrics = {
        "heldout_slice_accuracy": round(float((test_logits.argmax(1) == test_y).mean()), 4),
        "heldout_study_accuracy": head["accuracy"],
        "heldout_studies": head["studies"],
        "study_confusion": {"rows_true_cols_predicted": list(CT_CLASSES),
                            "counts": _confusion(sets["head"], temperature).tolist()},
        "heldout_sets": {name: _study_report(studies, temperature, threshold) for name, studies in sets.items()},
        "normal_heads_not_head_py_training_parameters": {
            "studies": len(every_normal),
            "false_positive_rate": _study_report(every_normal, temperature, threshold)["normal_false_positive_rate"],
            "false_positive_rate_uncalibrated_no_threshold":
                _study_report(every_normal, 1.0, 0.0)["normal_false_positive_rate"]},
        "calibration": {
            "temperature": round(temperature, 4), "indeterminate_below": threshold,
            "calibration_slices": int(len(calibration_y)), "calibration_studies": len(calibration_studies),
            "ece_calibration_slices_before": round(expected_calibration_error(softmax(calibration_logits), calibration_y), 4),
            "ece_calibration_slices_after": round(expected_calibration_error(softmax(calibration_logits, temperature), calibration_y), 4),
            "ece_heldout_slices_before": round(expected_calibration_error(softmax(test_logits), test_y), 4),
            "ece_heldout_slices_after": round(expected_calibration_error(softmax(test_logits, temperature), test_y), 4),
            "ece_heldout_studies_before": ece_studies(1.0), "ece_heldout_studies_after": ece_studies(temperature),
            "ece_bins": 15},
        "chance_accuracy": round(1 / len(CT_CLASSES), 4),
        "onnx_max_abs_diff": diff,
    }
    write_metadata(model_dir, metadata)
    return metadata


def _confusion(studies: list[tuple[str, np.ndarray]], temperature: float) -> np.ndarray:
    confusion = np.zeros((len(CT_CLASSES), len(CT_CLASSES)), int)
    for cls, logits in studies:
        study, _ = _study_outcome(logits, temperature, 0.0)
        confusion[CT_CLASSES.index(cls), int(np.argmax(study))] += 1
    return confusion


# ---- biomarkers ---------------------------------------------------------------------------------------------

def train_biomarkers(model_dir: Path, *, seed: int, quick: bool) -> ModelMetadata:
    n = 600 if quick else 4000
    params = dict(biomarkers.HGB_PARAMS, max_iter=10) if quick else dict(biomarkers.HGB_PARAMS)
    estimators, digest = biomarkers.fit(seed, n, params)
    test_x, test_y = biomarkers.generate(seed + 1_000_003, 3000)
    metrics = {f"heldout_accuracy_{name}": round(float((est.predict(test_x) == test_y[name]).mean()), 4)
               for name, est in estimators.items()}
    majority = {f"majority_baseline_{name}": round(float(np.bincount(y).max() / len(y)), 4) for name, y in test_y.items()}
    model_dir.mkdir(parents=True, exist_ok=True)
    metadata = ModelMetadata(
        id="biomarker_prediction", name="Biomarker-based tumour prediction (demo)", version="1.0.0-demo",
        task="tabular_classification",
        description="Tumour type, metastasis site and metastasis degree from age, sex and serum tumour markers.",
        labels={name: ", ".join(values) for name, values in biomarkers.OUTPUTS.items()},
        input={"format": "JSON object 'biomarkers': {age, gender, tumor_markers: {...}}",
               "features": list(biomarkers.FEATURES),
               "units": {name: unit for name, (unit, _) in biomarkers.MARKERS.items()},
               "missing": "any marker may be absent (at least one is needed)"},
        output={name: list(values) for name, values in biomarkers.OUTPUTS.items()},
        training={"generator": biomarkers.GENERATOR, "seed": seed, "n_samples": n,
                  "estimator": "sklearn.ensemble.HistGradientBoostingClassifier, one per output",
                  "params": params, "data_sha256": digest,
                  "probe_probabilities": biomarkers.probe_probabilities(estimators, seed),
                  "storage": "refitted at load from this configuration (no pickle); probes check the refit",
                  "quick": quick},
        metrics={**metrics, **majority, "heldout_rows": len(test_x)},
        intended_use=INTENDED_USE, framework=_framework(),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_metadata(model_dir, metadata)
    return metadata


_TRAINERS = {"mri_segmentation": train_segmentation, "ct_classification": train_classification,
             "biomarker_prediction": train_biomarkers}


def main(out_dir: str | Path, *, seed: int = 0, quick: bool = False,
         models: Sequence[str] = MODEL_IDS) -> dict[str, ModelMetadata]:
    """Train the demo models into ``out_dir/<model_id>/``; returns their metadata (metrics included)."""
    out = Path(out_dir)
    unknown = set(models) - set(_TRAINERS)
    if unknown:
        raise ValueError(f"unknown model ids {sorted(unknown)}; known: {list(_TRAINERS)}")
    previous_threads = torch.get_num_threads()
    try:
        results: dict[str, Any] = {}
        for model_id in models:
            results[model_id] = _TRAINERS[model_id](out / model_id, seed=seed, quick=quick)
            logger.info("trained %s: %s", model_id, results[model_id].metrics)
        return results
    finally:
        torch.set_num_threads(previous_threads)
