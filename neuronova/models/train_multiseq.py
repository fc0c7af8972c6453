"""Train the four-sequence demo segmentation model (T1c, T1, T2, FLAIR -> enhancing, necrotic, edema).

Training data are drawn straight in the model's space: each phantom head (``neuronova.phantoms.study``) is
rendered in the four contrasts on a 1.5 mm world grid and sampled on a RAS 1.5 mm grid turned by a small random
rotation (the pipeline keeps an oblique series' obliquity: ``Orientation`` only permutes axes), with its own
noise and bias field per contrast, then normalised as the pipeline does. The optional channels (T1, T2) are
dropped at random, so the model also runs on studies without them. Held-out quality is measured through the
production path on DICOM studies of other seeds in several orientations and spacings, tumour-free heads
included (:func:`evaluate`).

Fixed seeds and two torch threads make a run repeatable on one machine.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from neuronova.models import architectures
from neuronova.models.metadata import Architecture, ModelMetadata, read_metadata, write_metadata
from neuronova.models.train_demo import INTENDED_USE, _framework, _write_network
from neuronova.phantoms.head import TUMOUR_LABELS
from neuronova.phantoms.study import Acquisition, degrade, make_world, sample

logger = logging.getLogger(__name__)

MODEL_ID = "mri_tumour_study"
ROLES = ("t1c", "t1", "t2", "flair")
OPTIONAL_ROLES = ("t1", "t2")
PIXDIM = 1.5
#: One window over a whole head at PIXDIM (the network is small: a window costs less than its overlap would).
ROI_SIZE = (144, 160, 120)
#: One thread: on a shared two-core machine two torch threads spin-waited and made a step 6-14x slower
#: (measured 6-14 s against 0.9 s per step of this network).
TRAIN_THREADS = 1
_TRAIN_BASE, _HELDOUT_BASE = 200_000, 950_000
#: Model grid of a training head: (R, A, S) voxels at PIXDIM.
_GRID = (139, 160, 117)
#: RAS axes as LPS direction vectors.
_RAS_IN_LPS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    out = np.eye(3)
    for axis in range(3):
        t = math.radians(rng.uniform(-max_deg, max_deg))
        c, s = math.cos(t), math.sin(t)
        r = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def normalise_foreground(channel: np.ndarray) -> np.ndarray:
    """The pipeline's ``zscore_foreground`` on one channel (kept equal to neuronova.pipelines.physical)."""
    p99 = float(np.quantile(channel.reshape(-1)[:: max(1, channel.size // 200_000)], 0.99))
    values = channel[channel > 0.1 * p99] if p99 > 0 else channel.ravel()
    if values.size < 10:
        values = channel.ravel()
    return ((channel - values.mean()) / max(float(values.std()), 1e-6)).astype(np.float32)


def training_sample(seed: int, *, max_rotation_deg: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, R, A, S) normalised, labels (R, A, S)) of one phantom head in the model's space."""
    world = make_world(seed, spacing=PIXDIM, shape=(117, 160, 160))
    rng = np.random.default_rng([seed, 7])
    directions = _rotation(rng, max_rotation_deg) @ _RAS_IN_LPS * PIXDIM
    affine = np.eye(4)
    affine[:3, :3] = directions
    centre = world.head_centre_lps + rng.normal(0, 6, 3)
    affine[:3, 3] = centre - directions @ ((np.array(_GRID) - 1) / 2)
    labels = sample(world, affine, _GRID, None, order=0).astype(np.uint8)
    coords = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in _GRID), indexing="ij"),
                      axis=-1) @ directions.T.astype(np.float32)
    channels = []
    for role in ROLES:
        image = sample(world, affine, _GRID, world.images[role], order=1)
        # acquired at about 1 mm and averaged down to 1.5 mm by the pipeline: less noise than a 1.5 mm acquisition
        image = degrade(image, rng, noise_scale=rng.uniform(0.3, 1.0), coords_mm=coords)
        channels.append(normalise_foreground(image))
    return np.stack(channels).astype(np.float16), labels


def _crop(image: np.ndarray, labels: np.ndarray, patch: Sequence[int], rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    shape = labels.shape
    if rng.random() < 0.6 and labels.any():  # most patches hold tumour: it is a small part of the head
        points = np.argwhere(labels > 0)
        centre = points[rng.integers(len(points))]
        start = [int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, n - p))
                 for c, p, n in zip(centre, patch, shape, strict=True)]
    else:
        start = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, shape, strict=True)]
    box = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    return image[(slice(None), *box)].astype(np.float32), labels[box]


def _fit(module: torch.nn.Module, data: list[tuple[np.ndarray, np.ndarray]], cfg: dict[str, Any], *, steps: int,
         lr: float, rng: np.random.Generator, what: str) -> list[float]:
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    module.train()
    losses: list[float] = []
    progress = tqdm(range(steps), desc=f"{MODEL_ID}: {what}")
    for step in progress:
        xs, ys = [], []
        for _ in range(cfg["batch"]):
            image, labels = data[int(rng.integers(len(data)))]
            x, y = _crop(image, labels, cfg["patch"], rng)
            if rng.random() < 0.5:  # left-right mirror (array axis 0 is R)
                x, y = x[:, ::-1], y[::-1]
            x = x * rng.uniform(0.9, 1.1, (len(ROLES), 1, 1, 1)) + rng.uniform(-0.1, 0.1, (len(ROLES), 1, 1, 1))
            for role in OPTIONAL_ROLES:  # studies without this sequence: a zero channel
                if rng.random() < 0.2:
                    x[ROLES.index(role)] = 0.0
            xs.append(np.ascontiguousarray(x, dtype=np.float32))
            ys.append(np.ascontiguousarray(y))
        optimiser.zero_grad()
        loss = loss_fn(module(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)[:, None].astype(np.int64)))
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 20 == 19:
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def train(model_dir: Path, *, seed: int = 0, quick: bool = False, steps: int | None = None,
          finetune_steps: int | None = None, resume_phase_one: Path | None = None) -> ModelMetadata:
    """Train, export (weights.npz, model.onnx) and write metadata.json into ``model_dir``.

    Two phases on the same data: ``steps`` at ``lr`` (one-cycle), then ``finetune_steps`` at ``finetune_lr``
    with their own random stream. ``resume_phase_one``: a weights.npz of phase one (the same seed and data)
    to continue from instead of repeating it."""
    cfg: dict[str, Any] = {"n_train": 3, "steps": 3, "batch": 1, "patch": [32, 32, 32], "lr": 3e-3} if quick else {
        "n_train": 32, "steps": 450, "batch": 2, "patch": [48, 48, 48], "lr": 1e-2, "finetune_steps": 300,
        "finetune_lr": 2e-3}
    if steps is not None:
        cfg["steps"] = int(steps)
    if finetune_steps is not None:
        cfg["finetune_steps"] = int(finetune_steps)
    params = {"spatial_dims": 3, "in_channels": len(ROLES), "out_channels": 4, "channels": [8, 16, 32, 64],
              "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"}
    previous_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)
    started = time.perf_counter()
    try:
        rng = np.random.default_rng([seed, 11])
        data = [training_sample(_TRAIN_BASE + seed * 1000 + i)
                for i in tqdm(range(cfg["n_train"]), desc=f"{MODEL_ID}: phantoms", leave=False)]
        module = architectures.build("monai.networks.nets.UNet", params)
        if resume_phase_one is not None:
            from neuronova.models.runtime import load_weights

            load_weights(module, resume_phase_one)
            losses = []
        else:
            losses = _fit(module, data, cfg, steps=cfg["steps"], lr=cfg["lr"], rng=rng, what="training")
        if cfg.get("finetune_steps"):
            losses = _fit(module, data, cfg, steps=cfg["finetune_steps"], lr=cfg["finetune_lr"],
                          rng=np.random.default_rng([seed, 12]), what="fine-tuning")
        module.eval()
        # within the grid, and a multiple of 8 (the UNet halves it three times)
        roi = [min(r, n) // 8 * 8 for r, n in zip(ROI_SIZE, _GRID, strict=True)] if quick else list(ROI_SIZE)
        example = torch.zeros((1, len(ROLES), *roi))
        example[:, :, : _GRID[0], : _GRID[1], : _GRID[2]] = torch.from_numpy(
            data[0][0][:, : roi[0], : roi[1], : roi[2]].astype(np.float32))
        files, diff = _write_network(model_dir, module, example, dynamic_batch=True)
    finally:
        torch.set_num_threads(previous_threads)
    labels = {str(k): v for k, v in TUMOUR_LABELS.items()}
    metadata = ModelMetadata(
        id=MODEL_ID, name="MRI brain tumour segmentation, four sequences (demo)", version="1.1.0-demo",
        task="segmentation",
        description="3D segmentation of enhancing tumour, necrotic core and edema from T1c, T1, T2 and FLAIR "
                    "series of one study, resampled into one physical space.",
        labels=labels,
        input={"modality": "MR", "roles": list(ROLES), "optional_roles": list(OPTIONAL_ROLES), "axcodes": "RAS",
               "pixdim": [PIXDIM] * 3, "normalisation": "zscore_foreground", "roi_size": roi, "overlap": 0.25,
               "channels": len(ROLES)},
        output={"activation": "softmax", "type": "label volume on the reference series", "dtype": "uint8",
                "labels": labels},
        architecture=Architecture(name="monai.networks.nets.UNet", params=params),
        training={"data": "synthetic four-contrast MR head phantoms (neuronova.phantoms.study), in model space "
                          "with random rotations up to 15 degrees", "seed": seed,
                  "train_seeds": [_TRAIN_BASE + seed * 1000, _TRAIN_BASE + seed * 1000 + cfg["n_train"] - 1],
                  "loss": "DiceCE (softmax, foreground Dice)", "optimiser": "AdamW + one-cycle",
                  "optional_channel_dropout": 0.2, "final_loss": round(float(np.mean(losses[-20:])), 4),
                  "train_seconds": round(time.perf_counter() - started, 1), **cfg, "quick": quick},
        metrics={"onnx_max_abs_diff": diff},
        intended_use=INTENDED_USE, files=files, framework={**_framework(), "backend": "onnx"},
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_metadata(model_dir, metadata)
    return metadata


#: Held-out protocols: planes, obliquity, spacings and instance order differ from study to study.
def heldout_protocols() -> list[tuple[Acquisition, ...]]:
    return [
        (Acquisition("t1c", "axial", rows=192, columns=192, pixel_spacing=(1.2, 1.2), slices=120, slice_spacing=1.3),
         Acquisition("t1", "sagittal", rows=192, columns=192, pixel_spacing=(1.2, 1.2), slices=128, slice_spacing=1.2),
         Acquisition("t2", "axial", rows=192, columns=192, pixel_spacing=(1.2, 1.2), slices=45, slice_spacing=3.5),
         Acquisition("flair", "coronal", rows=192, columns=192, pixel_spacing=(1.2, 1.2), slices=55, slice_spacing=3.0,
                     shuffled=True)),
        (Acquisition("t1c", "sagittal", rows=176, columns=176, pixel_spacing=(1.3, 1.3), slices=120, slice_spacing=1.3),
         Acquisition("t1", "axial", rows=176, columns=176, pixel_spacing=(1.3, 1.3), slices=110, slice_spacing=1.5,
                     tilt_deg=10.0),
         Acquisition("t2", "coronal", rows=176, columns=176, pixel_spacing=(1.3, 1.3), slices=48, slice_spacing=3.5),
         Acquisition("flair", "axial", rows=176, columns=176, pixel_spacing=(1.3, 1.3), slices=40, slice_spacing=4.0,
                     tilt_deg=-8.0)),
        (Acquisition("t1c", "axial", rows=160, columns=160, pixel_spacing=(1.4, 1.4), slices=60, slice_spacing=2.5,
                     tilt_deg=15.0, shuffled=True),
         Acquisition("t1", "coronal", rows=160, columns=160, pixel_spacing=(1.4, 1.4), slices=90, slice_spacing=1.8),
         Acquisition("t2", "sagittal", rows=160, columns=160, pixel_spacing=(1.4, 1.4), slices=40, slice_spacing=4.0),
         Acquisition("flair", "axial", rows=160, columns=160, pixel_spacing=(1.4, 1.4), slices=50, slice_spacing=3.0)),
    ]


def heldout_seeds(seed: int = 0, n: int = 9) -> list[int]:
    return [_HELDOUT_BASE + seed * 1000 + i for i in range(n)]


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def evaluate(model_dir: Path, *, seed: int = 0, n: int = 9, tumour_free: int = 3) -> dict[str, Any]:
    """Held-out quality through the production path (DICOM series -> volumes -> physical space -> model ->
    labels on the reference series): Dice per study against the ground truth sampled on the reference grid,
    and the mL found in tumour-free heads."""
    from neuronova.models.metadata import read_metadata, verify_files
    from neuronova.models.multiseq import StudySegmentationModel
    from neuronova.phantoms.study import make_study
    from neuronova.pipelines.mri_tumour_study import segment_study
    from neuronova.pipelines.volume import load_series

    metadata = read_metadata(model_dir)
    verify_files(model_dir, metadata)
    model = StudySegmentationModel(model_dir, metadata, device="cpu")
    model.warmup()
    protocols = heldout_protocols()
    cases: list[dict[str, Any]] = []
    seeds = heldout_seeds(seed, n + tumour_free)
    for i, study_seed in enumerate(tqdm(seeds, desc=f"{MODEL_ID}: held-out", leave=False)):
        free = i >= n
        study = make_study(study_seed, protocol=protocols[i % len(protocols)], n_tumours=0 if free else 1 + i % 3)
        volumes = {role: load_series(s.datasets) for role, s in study.series.items()}
        result = segment_study(volumes, model)
        truth = study.series[result.model_input.reference_role].labels
        labels = result.labels
        assert labels is not None
        case: dict[str, Any] = {"seed": study_seed, "protocol": i % len(protocols),
                                "reference": result.model_input.reference_role,
                                "kinds": [t.kind for t in study.tumours], "volumes_ml": result.volumes_ml,
                                "seconds": round(result.inference_seconds, 2)}
        if not free:
            case["dice_whole_tumour"] = _dice(labels > 0, truth > 0)
            case["dice_enhancing"] = _dice(labels == 1, truth == 1)
            case["dice_necrotic"] = _dice(labels == 2, truth == 2)
            case["dice_edema"] = _dice(labels == 3, truth == 3)
        cases.append(case)

    def mean(key: str) -> float:
        values = [c[key] for c in cases if c.get(key) is not None]
        return round(float(np.mean(values)), 4)

    return {
        "heldout_studies": n, "tumour_free_studies": tumour_free,
        "dice_whole_tumour_mean": mean("dice_whole_tumour"), "dice_enhancing_mean": mean("dice_enhancing"),
        "dice_necrotic_mean": mean("dice_necrotic"), "dice_edema_mean": mean("dice_edema"),
        "dice_whole_tumour_min": round(min(c["dice_whole_tumour"] for c in cases if "dice_whole_tumour" in c), 4),
        "tumour_free_whole_tumour_ml": [c["volumes_ml"]["whole tumour"] for c in cases[n:]],
        "cases": cases,
    }


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the four-sequence demo segmentation model")
    parser.add_argument("out_dir", type=Path, help="models directory; the model goes to <out_dir>/" + MODEL_ID)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps (tests)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 450)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps (default 300)")
    parser.add_argument("--resume-phase-one", type=Path, default=None,
                        help="weights.npz of phase one (same seed) to continue from")
    parser.add_argument("--evaluate-only", action="store_true", help="measure an already trained model")
    args = parser.parse_args(argv)
    model_dir = args.out_dir / MODEL_ID
    if not args.evaluate_only:
        train(model_dir, seed=args.seed, quick=args.quick, steps=args.steps, finetune_steps=args.finetune_steps,
              resume_phase_one=args.resume_phase_one)
    if args.quick:
        return
    metrics = evaluate(model_dir, seed=args.seed)
    metadata = read_metadata(model_dir)
    metadata.metrics = {**metadata.metrics, **{k: v for k, v in metrics.items() if k != "cases"}}
    write_metadata(model_dir, metadata)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
