"""A MONAI bundle through the study pipeline: a four-sequence phantom study in (DICOM), the BraTS-configured
SegResNet bundle (random weights) as the study model, a SEG with overlapping regions and an SR out, valid.

The weights are random, so what the regions cover means nothing; the path from a bundle to valid DICOM is the
point (the pipeline's own tests check the segmentation quality with trained weights)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from neuronova.jobs.service import on_study_stable
from neuronova.jobs.store_sqlite import SqliteJobStore
from neuronova.models.registry import read_model_version
from neuronova.phantoms.study import make_study, small_protocol
from neuronova.pipelines.mri_tumour_study import MriTumourStudy
from neuronova.pipelines.registry import PipelineContext
from neuronova.routing.rules import load_rules
from neuronova.store import InstanceStore
from tests.conftest import dciodvfy_errors
from tests.jobs.helpers import encode, settings_for
from tests.models.test_bundles import BRATS_INFERENCE, write_bundle


@pytest.mark.slow
def test_brats_bundle_runs_as_the_study_model(tmp_path: Path) -> None:
    config = copy.deepcopy(BRATS_INFERENCE)
    # the zoo's BraTS config has no geometry steps (its data is 1 mm already); a coarse grid keeps this test quick
    config["preprocessing"]["transforms"][1:1] = [
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
    ]
    config["roi"] = [64, 64, 64]
    models = tmp_path / "models"
    write_bundle(models, "mri_tumour_study", inference=config)

    study = make_study(950003, protocol=small_protocol(scale=0.6), n_tumours=1)
    store = InstanceStore(tmp_path / "data")
    jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        for series in study.series.values():
            for ds in series.datasets:
                store.put(encode(ds))
        pipeline = MriTumourStudy(models)
        # the pipeline reads the bundle's version itself (configs/metadata.json), as a job would
        assert pipeline.version == read_model_version(models / "mri_tumour_study") == "0.5.2"
        [job] = on_study_stable(study.study_instance_uid, 1, store=store, jobs=jobs, rules=load_rules(),
                                pipelines={pipeline.name: pipeline}, enqueue=lambda job_id, **kw: None)
        context = PipelineContext(job=job, store=store, settings=settings_for(tmp_path / "data", model_dir=models),
                                  progress=lambda p: None)
        result = pipeline(context=context)
    finally:
        jobs.close()
        store.close()
    summary = result.summary
    assert summary["activation"] == "sigmoid" and summary["model_version"] == "0.5.2"
    assert set(summary["volumes_ml"]) == {"tumour core", "whole tumour", "enhancing tumour"}
    seg, sr = result.datasets[:2]
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour core", "whole tumour", "enhancing tumour"]
    for i, ds in enumerate(result.datasets):
        path = tmp_path / f"bundle{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality
