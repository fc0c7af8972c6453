"""Fixtures for the viewer tests: OHIF's built viewer, Chromium, a real Orthanc holding the node's results.

The results are made with the node's writers from a phantom MR study whose ground-truth tumour labels
stand in for a model's output (the lesion's voxels are then known exactly, so the tests can say where the
overlay must be). They reach Orthanc by dcmtk's storescu, as from the node's outbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuronova.phantoms.dicom import make_mr_study, write_series
from neuronova.phantoms.head import TUMOUR_LABELS
from neuronova.writers import (
    AlgorithmInfo,
    SegmentStat,
    compute_segment_stats,
    render_overlay,
    write_classification_report,
    write_overlay,
    write_region_segmentation,
    write_segmentation,
    write_segmentation_report,
)
from tests.conftest import REPO, OrthancProcess, dciodvfy_errors, get_port, storescu
from tests.viewer.server import ViewerServer

CHROMIUM = Path("/usr/bin/chromium")
CACHE = REPO / ".cache" / "viewer"  # filled by `make viewer-deps`
DIST = CACHE / "ohif" / "package" / "dist"
NODE_MODULES = CACHE / "node_modules"
SCRIPT = Path(__file__).with_name("ohif.js")


@dataclass
class Results:
    """The phantom study and what the node wrote for it, as files ready to send."""

    sources: list[pydicom.Dataset]
    labels: np.ndarray
    seg: pydicom.Dataset
    regions: pydicom.Dataset
    region_masks: dict[str, np.ndarray]
    sr: pydicom.Dataset
    empty_sr: pydicom.Dataset
    cls: pydicom.Dataset
    overlay: pydicom.Dataset
    stats: list[SegmentStat]
    files: list[Path]

    @property
    def study_uid(self) -> str:
        return str(self.sources[0].StudyInstanceUID)


class OrthancBehindProxy(OrthancProcess):
    """Orthanc without a fixed DICOMweb Host: its bulk-data URLs follow the proxy's Host header."""

    def config(self) -> dict[str, object]:
        config = super().config()
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        return config


def _box(mask: np.ndarray, importance: float) -> tuple[float, float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return (float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1), importance)


def _heat(mask: np.ndarray) -> np.ndarray:
    """A Grad-CAM-like blob centred on the lesion (the captures' content is not what is tested)."""
    rows, cols = np.nonzero(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    sigma = max(mask.shape) / 10
    return np.exp(-((yy - rows.mean()) ** 2 + (xx - cols.mean()) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    """A 24-slice MR with one tumour, its SEG (labels and overlapping regions), TID 1500 SR, a classification
    SR and a Grad-CAM capture."""
    study = make_mr_study(7, shape=(24, 128, 128), n_tumours=1)
    sources, labels, names = study.datasets, study.labels, dict(TUMOUR_LABELS)
    algorithm = AlgorithmInfo(name="NeuroNova MRI tumour segmentation", version="0.1.0",
                              model_sha256=hashlib.sha256(b"viewer test").hexdigest())
    seg = write_segmentation(sources, labels, names, algorithm=algorithm, series_number=1001)
    stats = compute_segment_stats(sources, labels, names)
    sr = write_segmentation_report(sources, seg, stats, algorithm=algorithm, series_number=1002)
    # a sigmoid model's overlapping regions, in their own SEG series (another pipeline name)
    label = {name: value for value, name in TUMOUR_LABELS.items()}
    enhancing = labels == label["enhancing tumour"]
    region_masks = {"whole tumour": labels > 0, "tumour core": enhancing | (labels == label["necrotic core"]),
                    "enhancing tumour": enhancing}
    regions = write_region_segmentation(sources, region_masks, algorithm=algorithm, series_number=1005,
                                        pipeline="mri_regions")
    # a run that found nothing (another pipeline name, so other UIDs): its report holds texts only
    nothing = np.zeros_like(labels)
    empty_seg = write_segmentation(sources, nothing, names, algorithm=algorithm, series_number=1006,
                                   pipeline="mri_nothing")
    empty_sr = write_segmentation_report(sources, empty_seg, compute_segment_stats(sources, nothing, names),
                                         algorithm=algorithm, series_number=1007, pipeline="mri_nothing")
    tumour = labels > 0
    z = int(np.argmax(tumour.sum(axis=(1, 2))))
    cls = write_classification_report(
        sources, predicted_class="Glioma", probabilities={"Glioma": 0.81, "Meningioma": 0.12, "Pituitary": 0.07},
        driving_slice_index=z, regions=[_box(tumour[z], 0.9)], algorithm=algorithm, series_number=1004,
        pipeline="ct_classification")
    gray = sources[z].pixel_array.astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(gray, [1, 99.5]))
    rgb = render_overlay(gray, _heat(tumour[z]), tumour[z], window=((lo + hi) / 2, hi - lo),
                         note="NOT FOR CLINICAL USE")
    overlay = write_overlay(sources[z], rgb, algorithm=algorithm, series_number=1003, instance_number=1,
                            derivation_description="Grad-CAM heatmap and tumour outline")

    out = tmp_path_factory.mktemp("results")
    files = write_series(sources, out / "mr")
    for name, ds in [("seg", seg), ("regions", regions), ("sr", sr), ("empty_sr", empty_sr), ("cls", cls), ("sc", overlay)]:
        path = out / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], name
        files.append(path)
    return Results(sources=sources, labels=labels, seg=seg, regions=regions, region_masks=region_masks, sr=sr,
                   empty_sr=empty_sr, cls=cls, overlay=overlay, stats=stats, files=files)


@pytest.fixture(scope="module")
def viewer(results, tmp_path_factory) -> Iterator[ViewerServer]:
    """OHIF on a free port, its DICOMweb source a real Orthanc that received the results by C-STORE."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (make system-deps installs it)")
    if not (DIST / "index.html").exists() or not (NODE_MODULES / "playwright-core").exists():
        pytest.fail("OHIF's viewer or playwright-core is missing from .cache/viewer: run `make viewer-deps`")
    orthanc = OrthancBehindProxy(root=tmp_path_factory.mktemp("orthanc"), http_port=get_port(),
                                 dicom_port=get_port())
    orthanc.start()
    server = ViewerServer(DIST, orthanc.url, get_port())
    try:
        sent = storescu(orthanc.dicom_port, results.files, aec="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        assert len(orthanc.instances()) == len(results.files)
        server.start()
        yield server
    finally:
        server.stop()
        orthanc.stop()


@pytest.fixture(scope="module")
def open_views(tmp_path_factory):
    """Run ohif.js on view specs; returns its results, screenshots under a pytest tmp dir."""
    out = tmp_path_factory.mktemp("screenshots")

    def run(views: list[dict[str, object]], timeout: float = 300) -> dict[str, dict[str, object]]:
        spec = out / "spec.json"
        spec.write_text(json.dumps({"chromium": str(CHROMIUM), "userDataDir": str(out / "profile"),
                                    "outDir": str(out), "views": views}))
        proc = subprocess.run(["node", str(SCRIPT), str(spec)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = {r["name"]: r for r in json.loads(proc.stdout)}
        for name, result in found.items():
            assert "error" not in result, f"{name}: {result.get('error')}"
        return found

    run.out = out  # type: ignore[attr-defined]
    return run
