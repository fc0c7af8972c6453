"""The study pipeline end to end on a stored four-sequence phantom study: routed into one job, run with the
shipped demo model, its SEG/SR/overlays valid (dciodvfy) and drawn on the reference series' voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuronova.jobs.service import on_study_stable
from neuronova.jobs.store_sqlite import SqliteJobStore
from neuronova.models import ModelRegistry
from neuronova.models.multiseq import StudySegmentationModel
from neuronova.models.volumetric import VolumeSegmenter
from neuronova.phantoms.study import make_study, small_protocol
from neuronova.pipelines.mri_tumour_study import MriTumourStudy
from neuronova.pipelines.registry import PipelineContext, pipelines
from neuronova.routing.rules import load_rules
from neuronova.store import InstanceStore
from tests.conftest import dciodvfy_errors
from tests.jobs.helpers import encode, settings_for


def test_demo_model_loads_as_a_volume_segmenter() -> None:
    registry = ModelRegistry.load(device="cpu", model_ids=("mri_tumour_study",))
    model = registry.get("mri_tumour_study")
    assert isinstance(model, StudySegmentationModel) and isinstance(model, VolumeSegmenter)
    assert model.roles == ("t1c", "t1", "t2", "flair") and model.optional_roles == {"t1", "t2"}
    assert model.preprocessing.pixdim == (1.5, 1.5, 1.5) and model.postprocessing.activation == "softmax"
    assert model.gradcam_module() is not None


@pytest.mark.parametrize("drop", [(), ("t2",)])
def test_study_job_writes_valid_results_on_the_reference(tmp_path: Path, drop: tuple[str, ...]) -> None:
    study = make_study(950003, protocol=small_protocol(), n_tumours=1)  # a glioma of about 65 mL
    store = InstanceStore(tmp_path / "data")
    jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        for role, series in study.series.items():
            if role not in drop:
                for ds in series.datasets:
                    store.put(encode(ds))
        [job] = on_study_stable(study.study_instance_uid, 1, store=store, jobs=jobs, rules=load_rules(),
                                pipelines=pipelines(), enqueue=lambda job_id, **kw: None)
        assert job.pipeline == "mri_tumour_study"
        seen: list[float] = []
        context = PipelineContext(job=job, store=store, settings=settings_for(tmp_path / "data"),
                                  progress=seen.append)
        result = MriTumourStudy()(context=context)
    finally:
        jobs.close()
        store.close()
    summary = result.summary
    reference = study.series["t1c"]
    assert summary["inputs"] == {r: s.series_instance_uid for r, s in study.series.items() if r not in drop}
    assert summary["reference"]["role"] == "t1c" and summary["zero_filled_roles"] == list(drop)
    assert seen == sorted(seen) and seen[-1] == 90
    seg, sr, *overlays = result.datasets
    assert seg.Modality == "SEG" and sr.Modality == "SR" and overlays
    for i, ds in enumerate(result.datasets):
        path = tmp_path / f"out{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality
    # the SEG's frames sit on the reference (T1c) slices, where the tumour is
    reference_uids = {ds.SOPInstanceUID: k for k, ds in enumerate(sorted(
        reference.datasets, key=lambda d: float(np.dot(d.ImagePositionPatient,
                                                     np.cross(d.ImageOrientationPatient[:3],
                                                              d.ImageOrientationPatient[3:])))))}
    seg = pydicom.dcmread(tmp_path / "out0.dcm")
    found = np.zeros(reference.labels.shape, bool)
    for frame, item in zip(seg.pixel_array.reshape(-1, *reference.labels.shape[1:]),
                           seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        found[reference_uids[uid]] |= frame.astype(bool)
    truth = reference.labels > 0
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.8, dice
    assert summary["volumes_ml"]["whole tumour"] > 0 and summary["xai"]["slices"] > 0


def test_a_sigmoid_model_writes_overlapping_regions(tmp_path: Path) -> None:
    """Another VolumeSegmenter card over the demo weights: sigmoid outputs read as overlapping regions (each
    channel's logit > 0), which the pipeline writes with write_region_segmentation. The regions' quality is not
    the point; the path from a sigmoid model to a valid SEG and SR is."""
    import json
    import shutil

    from neuronova.models.registry import DEFAULT_MODEL_DIR

    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL_DIR / "mri_tumour_study", models / "mri_tumour_study")
    card = json.loads((models / "mri_tumour_study" / "metadata.json").read_text())
    card["version"] = "1.0.0-sigmoid-test"
    card["labels"] = {"1": "enhancing tumour", "2": "tumour core", "3": "whole tumour"}
    card["output"]["activation"] = "sigmoid"
    (models / "mri_tumour_study" / "metadata.json").write_text(json.dumps(card))

    study = make_study(950003, protocol=small_protocol(scale=0.8), n_tumours=1)
    store = InstanceStore(tmp_path / "data")
    jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        for series in study.series.values():
            for ds in series.datasets:
                store.put(encode(ds))
        pipeline = MriTumourStudy(models)
        [job] = on_study_stable(study.study_instance_uid, 1, store=store, jobs=jobs, rules=load_rules(),
                                pipelines={pipeline.name: pipeline}, enqueue=lambda job_id, **kw: None)
        context = PipelineContext(job=job, store=store, settings=settings_for(tmp_path / "data", model_dir=models),
                                  progress=lambda p: None)
        result = pipeline(context=context)
    finally:
        jobs.close()
        store.close()
    assert result.summary["activation"] == "sigmoid" and result.summary["model_version"] == "1.0.0-sigmoid-test"
    assert set(result.summary["volumes_ml"]) == {"enhancing tumour", "tumour core", "whole tumour"}
    seg, sr = result.datasets[:2]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["enhancing tumour", "tumour core", "whole tumour"]
    for i, ds in enumerate(result.datasets):
        path = tmp_path / f"sig{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality


def test_a_tumour_free_head_with_partial_coverage_gets_no_label() -> None:
    """A held-out tumour-free study whose T2 (sagittal, 40 x 4 mm) and FLAIR (50 x 3 mm) cover less than the
    tilted T1c: outside their slabs the network saw padding, and the shipped model called 16.5 mL of scalp
    there "enhancing tumour" before such voxels were excluded."""
    from neuronova.models.train_multiseq import heldout_protocols
    from neuronova.pipelines.mri_tumour_study import segment_study
    from neuronova.pipelines.volume import load_series

    model = ModelRegistry.load(device="cpu", model_ids=("mri_tumour_study",)).get("mri_tumour_study")
    protocols = heldout_protocols()
    study = make_study(950011, protocol=protocols[11 % len(protocols)], n_tumours=0)
    result = segment_study({role: load_series(s.datasets) for role, s in study.series.items()}, model)
    assert result.model_input.covered is not None and not result.model_input.covered.all()
    assert result.volumes_ml["whole tumour"] == 0.0, result.volumes_ml


def test_study_grad_cam_puts_no_heat_on_air() -> None:
    """The map comes back through the inverse of the resampling with air at the edges of the reference field
    of view: it is restricted to the head found in the reference series' own images (OHIF showed the 1.1.0
    map hottest in the corners before)."""
    from neuronova.pipelines.mri_tumour_study import _explain, segment_study
    from neuronova.pipelines.volume import load_series
    from neuronova.xai import body_mask

    model = ModelRegistry.load(device="cpu", model_ids=("mri_tumour_study",)).get("mri_tumour_study")
    study = make_study(950003, protocol=small_protocol(), n_tumours=1)
    result = segment_study({role: load_series(s.datasets) for role, s in study.series.items()}, model)
    cam = _explain(result.model_input, model.gradcam_module(), 60.0)
    body = body_mask(result.model_input.reference.array)
    assert cam.shape == body.shape and cam.max() == 1.0
    assert not cam[~body].any()
