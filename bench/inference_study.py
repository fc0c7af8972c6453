"""Study-level inference benchmark: four 155-slice MR series of one study -> labels on the reference series.

    python bench/inference_study.py [--repeats 3] [--model-dir DIR]

The study is a four-contrast phantom (neuronova.phantoms.study): T1c axial 256x256 at 0.9 mm, T1 sagittal,
T2 axial oblique and FLAIR coronal, 155 slices each, written as DICOM files first. The time per study covers
reading the 620 files, building the four volumes, resampling them onto the reference's model grid (MONAI
Orientation/Spacing/SpatialResample), normalisation, inference (ONNX Runtime on the CPU unless the model says
otherwise), the inverse back onto the reference's 155 slices and the labels; model loading is reported apart.
The same run times the single-series model (mri_segmentation) on the T1c alone, for comparison.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronova.models.metadata import read_metadata, verify_files  # noqa: E402
from neuronova.models.multiseq import StudySegmentationModel  # noqa: E402
from neuronova.models.registry import DEFAULT_MODEL_DIR, ModelRegistry  # noqa: E402
from neuronova.models.segmentation import SegmentationModel  # noqa: E402
from neuronova.phantoms.dicom import write_series  # noqa: E402
from neuronova.phantoms.study import Acquisition, make_study  # noqa: E402
from neuronova.pipelines.inference import segment_volume  # noqa: E402
from neuronova.pipelines.mri_tumour_study import segment_study  # noqa: E402
from neuronova.pipelines.volume import load_series  # noqa: E402

PROTOCOL = (
    Acquisition("t1c", "axial", rows=256, columns=256, pixel_spacing=(0.9, 0.9), slices=155, slice_spacing=1.0),
    Acquisition("t1", "sagittal", rows=256, columns=256, pixel_spacing=(0.9, 0.9), slices=155, slice_spacing=1.0),
    Acquisition("t2", "axial", rows=256, columns=256, pixel_spacing=(0.9, 0.9), slices=155, slice_spacing=1.0,
                tilt_deg=10.0),
    Acquisition("flair", "coronal", rows=256, columns=256, pixel_spacing=(0.9, 0.9), slices=155, slice_spacing=1.2),
)


def _read(paths: list[Path]):
    return load_series([pydicom.dcmread(p) for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=950_001)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("NEURONOVA_BENCH_THREADS", "2")))

    t = time.perf_counter()
    study = make_study(args.seed, protocol=PROTOCOL, n_tumours=2)
    generate_s = time.perf_counter() - t
    out: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()},
                 "study": {role: [len(s.datasets), s.acquisition.plane, s.acquisition.tilt_deg]
                           for role, s in study.series.items()},
                 "generate_s": round(generate_s, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        files = {role: write_series(s.datasets, Path(tmp) / role) for role, s in study.series.items()}

        t = time.perf_counter()
        path = args.model_dir / "mri_tumour_study"
        metadata = read_metadata(path)
        verify_files(path, metadata)
        model = StudySegmentationModel(path, metadata, device="cpu")
        model.warmup()
        out["study_model"] = {"load_s": round(time.perf_counter() - t, 2), "backend": model.runtime.backend}
        times, parts = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            volumes = {role: _read(paths) for role, paths in files.items()}
            read_s = time.perf_counter() - t
            result = segment_study(volumes, model)
            total = time.perf_counter() - t
            times.append(total)
            parts.append({"read_s": round(read_s, 2), "segment_s": round(result.inference_seconds, 2), **result.timings})
        truth = study.series[result.model_input.reference_role].labels
        labels = result.labels
        assert labels is not None
        dice = 2 * float(((labels > 0) & (truth > 0)).sum()) / float((labels > 0).sum() + (truth > 0).sum())
        out["study_model"].update({"seconds_median": round(statistics.median(times), 2), "runs": parts,
                                   "model_grid": list(result.model_input.image.shape[1:]),
                                   "reference_shape": list(result.reference.shape),
                                   "dice_whole_tumour": round(dice, 4), "volumes_ml": result.volumes_ml})

        registry = ModelRegistry.load(args.model_dir, device="cpu", model_ids=("mri_segmentation",))
        single = registry.get("mri_segmentation", SegmentationModel)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            seg = segment_volume(_read(files["t1c"]), single)
            times.append(time.perf_counter() - t)
        single_dice = 2 * float(((seg.labels > 0) & (truth > 0)).sum()) / float((seg.labels > 0).sum()
                                                                               + (truth > 0).sum())
        out["single_series_model"] = {"seconds_median": round(statistics.median(times), 2),
                                      "dice_whole_tumour_on_t1c": round(single_dice, 4),
                                      "volumes_ml": seg.volumes_ml}
    print(json.dumps(out, indent=1, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v)))


if __name__ == "__main__":
    main()
