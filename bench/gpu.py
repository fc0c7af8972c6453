"""GPU benchmark: one command, under 5 minutes on a GPU machine (it runs on a CPU too, for checking).

    python bench/gpu.py [--model-dir DIR] [--repeats 5] [--quick] [--json OUT.json]

Reports, on the device the node would pick (``auto``):
- per model and backend (ONNX Runtime with the provider it really got, torch fp32, torch fp16 and bf16
  autocast): the network time per study on a phantom (155-slice 256x256 MR; 200-slice 512x512 CT), and for
  the mixed-precision rows the agreement with fp32 (labels' Dice per label, same CT class);
- the whole ``mri_segmentation`` and ``ct_classification`` pipelines per study (DICOM files in a store ->
  SEG/SR/overlays in memory: reading, inference, Grad-CAM, writing), the first study after start (a fresh
  process: imports, model load and warm-up included, reported apart) and the steady state;
- peak GPU memory (torch's allocator) per section;
- a BraTS-sized network with random weights loaded from a model directory like real weights: MONAI's
  SegResNet in the brats_mri_segmentation configuration (4 x 240 x 240 x 155, 224 x 224 x 144 windows),
  through the node's MONAI-bundle loader when that is present.

Targets (issue "GPU workers for real", one H100/H200-class GPU): mri_segmentation pipeline <= 1.0 s per
155-slice study in steady state, first study after start <= 1.5 s, BraTS-sized whole pipeline <= 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _describe() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers(), "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median of ``repeats`` calls after a first, warming one; ``repeats`` 0: the first call's time."""
    t = time.perf_counter()
    out = fn()  # warm (first call of this configuration)
    _sync()
    if repeats == 0:
        return time.perf_counter() - t, out
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def backends(model_dir: Path | None, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """Network time per study, per model and backend, with the fp32 agreement of mixed precision."""
    from neuronova.models.registry import ModelRegistry
    from neuronova.phantoms.head import make_ct_phantom, make_mr_phantom

    registry = ModelRegistry.load(model_dir, device="auto")
    rows: list[dict[str, Any]] = []
    mr = make_mr_phantom(1, shape=(80, 128, 128) if quick else (155, 256, 256))
    ct = make_ct_phantom(2, shape=(20, 256, 256) if quick else (200, 512, 512))
    seg = registry.get("mri_segmentation")
    cls = registry.get("ct_classification")
    area = ct.spacing[1] * ct.spacing[2]
    configs = [("onnx", "fp32"), ("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16")]
    reference: dict[str, Any] = {}
    for model_id, model, run in (
        ("mri_segmentation", seg, lambda m, b: m.predict(mr.image, backend=b)),  # type: ignore[attr-defined]
        ("ct_classification", cls, lambda m, b: m.classify_volume(ct.image, pixel_area_mm2=area, backend=b)),  # type: ignore[attr-defined]
    ):
        saved = model.precision  # type: ignore[attr-defined]
        for backend, precision in configs:
            if precision != "fp32" and model.torch_device.type != "cuda":  # type: ignore[attr-defined]
                continue  # autocast fp16 is a GPU feature; the CPU test covers bf16 (tests/models/test_device.py)
            model.precision = precision  # type: ignore[attr-defined]
            _peak_reset()
            row: dict[str, Any] = {"model": model_id, "backend": backend, "precision": precision,
                                   "where": model.runtime_status() if backend == model.backend else None}  # type: ignore[attr-defined]
            try:
                seconds, out = _timed(lambda: run(model, backend), repeats)  # noqa: B023
            except Exception as exc:  # a backend that fails here is a finding, not the end of the run
                rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                continue
            row.update(seconds=round(seconds, 4), peak_gpu_gb=_peak_gb(),
                       provider=model.providers[0] if backend == "onnx" else "torch " + str(model.torch_device))  # type: ignore[attr-defined]
            if (backend, precision) == ("torch", "fp32"):
                reference[model_id] = out
            elif precision != "fp32" and model_id in reference:
                ref = reference[model_id]
                if model_id == "mri_segmentation":
                    row["dice_vs_fp32"] = {int(k): round(_dice(ref == k, out == k), 4) for k in np.unique(ref[ref > 0])}
                else:
                    row["same_class_as_fp32"] = out.predicted_class == ref.predicted_class
            rows.append(row)
        model.precision = saved  # type: ignore[attr-defined]
    return rows


def _store_study(datasets: list[Any], data_dir: Path) -> Any:
    from pydicom.filebase import DicomBytesIO

    from neuronova.store import InstanceStore

    store = InstanceStore(data_dir)
    for ds in datasets:
        buf = DicomBytesIO()
        ds.save_as(buf, enforce_file_format=True)
        store.put(buf.getvalue())
    return store


def pipelines(model_dir: Path | None, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """Whole pipelines per study in this (warm) process."""
    from neuronova.config import Settings
    from neuronova.jobs.model import Job
    from neuronova.phantoms.dicom import make_ct_study, make_mr_study
    from neuronova.pipelines.registry import PipelineContext, model_pipelines

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", model_dir=model_dir, device="auto")
        studies = {"mri_segmentation": make_mr_study(11, shape=(80, 128, 128) if quick else (155, 256, 256)).datasets,
                   "ct_classification": make_ct_study(12, n_slices=20 if quick else 200, matrix=256 if quick else 512,
                                                      tumour_class="Glioma").datasets}
        store = _store_study([ds for s in studies.values() for ds in s], settings.data_dir)
        found = model_pipelines(model_dir)
        try:
            for name, datasets in studies.items():
                pipeline = found[name]
                job = Job.new(study_uid=datasets[0].StudyInstanceUID, series_uid=datasets[0].SeriesInstanceUID,
                              pipeline=name, model_version=pipeline.version, input_fingerprint="bench")
                context = PipelineContext(job=job, store=store, settings=settings, progress=lambda p: None)
                _peak_reset()
                seconds, result = _timed(lambda: pipeline(context=context), repeats)  # noqa: B023
                rows.append({"pipeline": name, "slices": len(datasets), "seconds_per_study": round(seconds, 3),
                             "timings_last": result.summary.get("timings"), "peak_gpu_gb": _peak_gb(),
                             "outputs": len(result.datasets)})
        finally:
            store.close()
    return rows


def first_study(model_dir: Path | None, quick: bool) -> dict[str, Any]:
    """A fresh process: import, load and warm up the models, then one MR study; the study is timed apart."""
    code = f"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
import bench.gpu as g
from neuronova.models.shared import shared_registry
model_dir = {str(model_dir) if model_dir else None!r}
t1 = time.perf_counter()
shared_registry(Path(model_dir) if model_dir else None, device="auto")
t2 = time.perf_counter()
rows = g.pipelines(Path(model_dir) if model_dir else None, 0, {quick!r})
print(json.dumps({{"imports_s": round(t1 - t0, 2), "load_and_warmup_s": round(t2 - t1, 2),
                  "first_study_s": rows[0]["seconds_per_study"], "pipeline": rows[0]["pipeline"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def brats_sized(repeats: int, quick: bool) -> dict[str, Any]:
    """MONAI SegResNet in the BraTS bundle configuration with random weights, loaded from a model directory."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    shape = (96, 96, 64) if quick else (240, 240, 155)
    roi = (96, 96, 64) if quick else (224, 224, 144)
    with tempfile.TemporaryDirectory() as tmp:
        net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                        out_channels=3, dropout_prob=0.2)
        torch.manual_seed(0)
        (Path(tmp) / "models").mkdir()
        torch.save(net.state_dict(), Path(tmp) / "models" / "model.pt")
        via = "models/model.pt, torch.load(weights_only=True)"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        state = torch.load(Path(tmp) / "models" / "model.pt", weights_only=True)
        net.load_state_dict(state)
        net = net.to(device).eval()
        image = torch.randn(1, 4, *shape, device=device)
        results: dict[str, Any] = {"loaded_via": via, "shape": shape, "roi": roi,
                                   "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2)}
        for precision, dtype in (("fp32", None), ("fp16", torch.float16)):
            if dtype is not None and device.type != "cuda":
                continue
            _peak_reset()

            def run() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    return torch.sigmoid(sliding_window_inference(image, roi, 1, net, overlap=0.5))  # noqa: B023

            seconds, out = _timed(run, max(1, repeats if device.type == "cuda" else 1))
            results[precision] = {"seconds": round(seconds, 3), "peak_gpu_gb": _peak_gb(),
                                  "voxels_over_0.5": int((out > 0.5).sum())}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small studies (checks the script on a CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report: dict[str, Any] = {"device": _describe()}
    print(json.dumps(report["device"]), flush=True)
    for name, fn in (("backends", lambda: backends(args.model_dir, args.repeats, args.quick)),
                     ("pipelines_steady", lambda: pipelines(args.model_dir, args.repeats, args.quick)),
                     ("first_study_after_start", lambda: first_study(args.model_dir, args.quick)),
                     ("brats_sized_segresnet", lambda: brats_sized(args.repeats, args.quick))):
        t = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # every section reports, even when one fails
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"## {name} ({time.perf_counter() - t:.1f} s)\n{json.dumps(report[name], indent=1)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
