"""Inference benchmark: per-study time and peak RSS, ONNX Runtime vs eager PyTorch, in one run.

    python bench/inference.py [--repeats 7] [--model-dir DIR] [--quick] [--configs brats-bundle,...]

Studies (synthetic phantoms, written as DICOM files first): a 155-slice 256x256 MR (segmentation) and a
200-slice 512x512 CT (classification of every brain slice). Each configuration runs in its own process so
its peak RSS is its own; the time per study covers reading the DICOM files, building the volume,
preprocessing, inference and postprocessing (model loading is reported apart, once per process; "network" is the model calls alone on the
preprocessed input: for the UNet, the 8 blended windows). Also the
classifier's time per slice at several batch sizes on both backends. Prints the device first.

``brats-bundle``: MONAI's BraTS bundle layout (configs as in the model zoo's brats_mri_segmentation: SegResNet
init_filters 16, blocks_down [1, 2, 2, 4], blocks_up [1, 1, 1], 4 -> 3 channels, sliding windows 240x240x160 with
overlap 0.5) with random weights, loaded by the registry, run on a four-sequence phantom of 240x240x155 at 1 mm:
the time covers the z-score normalisation and ``infer`` (windows, network, sigmoid), with torch on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = ("mr-onnx", "mr-torch", "mr-torch-cl3d", "ct-onnx", "ct-torch", "brats-bundle")
#: The model zoo's brats_mri_segmentation network and inferer (configs/inference.json, version 0.5.2).
BRATS_NETWORK = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
                 "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
BRATS_INFERER = {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5}


def device_description() -> str:
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu}, {os.cpu_count()} logical cores; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}; GPU: {gpu}")


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a worker would report its parent's peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_brats_bundle(root: Path) -> Path:
    """A bundle in MONAI's layout with the zoo's BraTS configs and random weights (seed 0)."""
    import torch
    from monai.networks.nets import SegResNet

    bundle = root / "brats_mri_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    inference = {
        "imports": ["$import glob", "$import os"], "image_key": "image",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": BRATS_NETWORK, "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key", "image_only": False},
            {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True, "channel_wise": True}]},
        "inferer": BRATS_INFERER,
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key"},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"}]},
        "run": ["$@evaluator.run()"],
    }
    metadata = {
        "version": "0.5.2", "name": "BraTS MRI segmentation (random weights)",
        "image_classes": "4 channel data, T1c, T1, T2, FLAIR at 1x1x1 mm",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 4, "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
            "outputs": {"pred": {"num_channels": 3,
                                 "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}}},
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(0)
    net = SegResNet(**{k: v for k, v in BRATS_NETWORK.items() if k != "_target_"})
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


def bundle_worker(data_dir: Path, repeats: int, threads: int) -> dict[str, object]:
    """The BraTS bundle on a 4 x 240 x 240 x 155 study (1 mm): normalisation + infer, per study."""
    import torch

    from neuronova.models import load_model
    from neuronova.models.bundle import apply_normalisation
    from neuronova.phantoms.study import make_world

    torch.set_num_threads(threads)
    bundle = write_brats_bundle(data_dir / "bundles")
    t0 = time.perf_counter()
    entry = load_model(bundle, device="auto", warmup=False)
    assert entry.model is not None, entry.error
    model = entry.model
    load_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.warmup()  # one window of 240x240x160: what the registry does at start-up
    warmup_seconds = time.perf_counter() - t0
    world = make_world(2024, n_tumours=2, spacing=1.0, shape=(155, 240, 240))
    # (z, y, x) -> (I, J, K) = (x, y, z), channels in the bundle's order
    study = np.stack([world.images[role].transpose(2, 1, 0) for role in model.roles]).astype(np.float32)
    del world
    times, cpu_times, network_times = [], [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        probs = model.infer(apply_normalisation(study, model.preprocessing.normalisation))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)  # all threads: on a shared machine, what the study costs
    normalised = apply_normalisation(study, model.preprocessing.normalisation)
    t0 = time.perf_counter()
    model.infer(normalised)
    network_times.append(time.perf_counter() - t0)
    parameters = sum(p.numel() for p in model.gradcam_module()[0].parameters())
    return {
        "config": "brats-bundle", "model_load_s": round(load_seconds, 3), "warmup_s": round(warmup_seconds, 3),
        "study_s_median": round(statistics.median(times), 3), "study_s_min": round(min(times), 3),
        "series_load_s_median": 0.0, "network_s_median": round(statistics.median(network_times), 3),
        "study_cpu_s_median": round(statistics.median(cpu_times), 3), "load_average": os.getloadavg()[0],
        "peak_rss_mb": round(_peak_rss_mb(), 1), "providers": [], "threads": torch.get_num_threads(),
        "device": model.runtime.device, "shape": list(study.shape), "parameters": parameters,
        "roi_size": list(model.roi_size or ()), "overlap": model.overlap,
        "voxels_over_threshold": [int((probs[c] > model.postprocessing.threshold).sum()) for c in range(probs.shape[0])],
    }


def worker(config: str, data_dir: Path, model_dir: Path | None, repeats: int) -> dict[str, object]:
    import torch

    if config == "brats-bundle":
        return bundle_worker(data_dir, max(1, min(repeats, 3)), threads=2)

    from neuronova.models import load_model
    from neuronova.models.registry import DEFAULT_MODEL_DIR
    from neuronova.models.segmentation import labels_to_source
    from neuronova.pipelines.inference import classify_ct_series, segment_volume
    from neuronova.pipelines.volume import load_series

    root = model_dir or DEFAULT_MODEL_DIR
    modality, backend = config.split("-", 1)
    start = time.perf_counter()
    entry = load_model(root / ("mri_segmentation" if modality == "mr" else "ct_classification"), device="auto")
    assert entry.model is not None, entry.error
    model = entry.model
    load_seconds = time.perf_counter() - start
    files = sorted((data_dir / modality).glob("*.dcm"))

    if backend == "torch-cl3d":
        module = model.torch_module().to(memory_format=torch.channels_last_3d)

        def run(volume):  # type: ignore[no-untyped-def]
            x = model.as_tensor(model.preprocess(volume.array)).to(memory_format=torch.channels_last_3d)
            with torch.inference_mode():
                grid = module(x)[0].argmax(0).cpu().numpy().astype(np.uint8)
            return labels_to_source(grid, volume.array.shape)
    elif modality == "mr":
        def run(volume):  # type: ignore[no-untyped-def]
            return segment_volume(volume, model, backend=backend)
    else:
        def run(volume):  # type: ignore[no-untyped-def]
            return classify_ct_series(volume, model, backend=backend)

    def network_only(volume):  # type: ignore[no-untyped-def]
        """The network's share: the preprocessed input is ready, time the model calls alone."""
        if modality == "mr":
            x = model.preprocess(volume.array)
            if backend == "torch-cl3d":
                t = model.as_tensor(x).to(memory_format=torch.channels_last_3d)
                start = time.perf_counter()
                with torch.inference_mode():
                    module(t)
                return time.perf_counter() - start
            start = time.perf_counter()
            model.logits(x, backend=backend)
            return time.perf_counter() - start
        x = np.concatenate([model.preprocess_slices(volume.array[i:i + 32]) for i in range(0, len(volume.array), 32)])
        start = time.perf_counter()
        model.predict_proba(x, backend=backend)
        return time.perf_counter() - start

    times, load_times, infer_times = [], [], []
    for i in range(repeats + 1):  # the first round warms caches and is dropped
        t0 = time.perf_counter()
        volume = load_series(files)
        t1 = time.perf_counter()
        result = run(volume)
        t2 = time.perf_counter()
        if i:
            times.append(t2 - t0)
            load_times.append(t1 - t0)
            infer_times.append(network_only(volume))
    out: dict[str, object] = {
        "config": config, "model_load_s": round(load_seconds, 3),
        "study_s_median": round(statistics.median(times), 3), "study_s_min": round(min(times), 3),
        "series_load_s_median": round(statistics.median(load_times), 3),
        "network_s_median": round(statistics.median(infer_times), 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "providers": getattr(model, "providers", []),
    }
    if modality == "ct":
        out["slices_classified"] = len(result.slice_indices)
        out["predicted"] = result.predicted_class
    return out


def batch_sizes(model_dir: Path | None, repeats: int) -> list[dict[str, object]]:
    from neuronova.models import load_model
    from neuronova.models.registry import DEFAULT_MODEL_DIR

    model = load_model((model_dir or DEFAULT_MODEL_DIR) / "ct_classification").model
    assert model is not None
    rows = []
    rng = np.random.default_rng(0)
    for batch in (1, 8, 32, 64):
        x = rng.normal(size=(batch, 1, model.size, model.size)).astype(np.float32)
        row: dict[str, object] = {"batch": batch}
        for backend in ("onnx", "torch"):
            for _ in range(3):
                model.run(x, backend=backend)
            samples = []
            for _ in range(max(repeats, 5) * 4):
                t0 = time.perf_counter()
                model.run(x, backend=backend)
                samples.append(time.perf_counter() - t0)
            row[f"{backend}_ms_per_batch"] = round(statistics.median(samples) * 1000, 2)
            row[f"{backend}_ms_per_slice"] = round(statistics.median(samples) * 1000 / batch, 3)
        row["speedup"] = round(float(row["torch_ms_per_batch"]) / float(row["onnx_ms_per_batch"]), 2)  # type: ignore[arg-type]
        rows.append(row)
    return rows


def write_studies(data_dir: Path, quick: bool) -> None:
    from neuronova.phantoms import make_ct_study, make_mr_study, write_series

    mr_shape = (40, 128, 128) if quick else (155, 256, 256)
    ct_slices, ct_matrix = (40, 256) if quick else (200, 512)
    write_series(make_mr_study(2024, shape=mr_shape, n_tumours=2).datasets, data_dir / "mr")
    write_series(make_ct_study(2025, n_slices=ct_slices, matrix=ct_matrix, tumour_class="Meningioma").datasets,
                 data_dir / "ct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="small studies, for a smoke test")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated configurations to run (default: all); 'batch' adds the batch sizes")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data_dir, args.model_dir, args.repeats)))
        return

    chosen = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(chosen) - set(CONFIGS) - {"batch"})
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}, batch")
    print("device:", device_description(), flush=True)
    with tempfile.TemporaryDirectory(prefix="neuronova-bench-") as tmp:
        data_dir = Path(tmp)
        if any(c.startswith(("mr-", "ct-")) for c in chosen):
            t0 = time.perf_counter()
            write_studies(data_dir, args.quick)
            print(f"phantom studies written in {time.perf_counter() - t0:.1f} s", flush=True)
        print("\nper study (median of %d; series read + preprocessing + inference + postprocessing)" % args.repeats)
        print(f"{'config':<15}{'study s':>9}{'min s':>8}{'read s':>8}{'network s':>11}{'model load s':>14}"
              f"{'peak RSS MB':>13}")
        for config in (c for c in CONFIGS if c in chosen):
            command = [sys.executable, __file__, "--worker", config, "--data-dir", str(data_dir),
                       "--repeats", str(args.repeats)]
            if args.model_dir:
                command += ["--model-dir", str(args.model_dir)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{config:<15} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            extra = f"  ({r['slices_classified']} slices, {r['predicted']})" if "predicted" in r else ""
            if config == "brats-bundle":
                extra = (f"  ({r['parameters']} parameters, {r['shape']}, windows {r['roi_size']} overlap "
                         f"{r['overlap']}, {r['threads']} threads on {r['device']}; warm-up {r['warmup_s']} s; "
                         f"CPU time per study {r['study_cpu_s_median']} s; load average {r['load_average']:.1f})")
            print(f"{config:<15}{r['study_s_median']:>9}{r['study_s_min']:>8}{r['series_load_s_median']:>8}"
                  f"{r['network_s_median']:>11}"
                  f"{r['model_load_s']:>14}{r['peak_rss_mb']:>13}{extra}", flush=True)
    if args.configs != ",".join(CONFIGS) and "batch" not in args.configs.split(","):
        return
    print("\nCT classifier, time per batch of 128x128 slices (median)")
    print(f"{'batch':>5}{'ORT ms':>10}{'torch ms':>10}{'ORT ms/slice':>14}{'torch ms/slice':>16}{'speed-up':>10}")
    for row in batch_sizes(args.model_dir, args.repeats):
        print(f"{row['batch']:>5}{row['onnx_ms_per_batch']:>10}{row['torch_ms_per_batch']:>10}"
              f"{row['onnx_ms_per_slice']:>14}{row['torch_ms_per_slice']:>16}{row['speedup']:>10}")


if __name__ == "__main__":
    main()
