"""``mri_tumour_study``: the series of one study, by role -> one physical space -> any VolumeSegmenter -> SEG,
TID 1500 SR and Grad-CAM secondary captures on the reference series.

Steps: read each role's series as a volume; resample them onto the model grid of the reference series
(:mod:`neuronova.pipelines.physical`); infer (the model's windows, network and activation); map the
probabilities back onto the reference series' voxels and threshold them (softmax labels or sigmoid
overlapping regions); explain (Grad-CAM on the model grid, mapped back the same way; skipped for a model
without torch weights); write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from neuronova.errors import ModelNotLoaded, SeriesError
from neuronova.models.base import LoadedModel
from neuronova.models.volumetric import VolumeSegmenter
from neuronova.pipelines.registry import PipelineContext, PipelineResult
from neuronova.pipelines.steps import ModelPipeline, algorithm_info, model_for, try_explain
from neuronova.pipelines.volume import Volume, load_series

if TYPE_CHECKING:
    from neuronova.pipelines.physical import ModelInput

log = logging.getLogger(__name__)

#: Series numbers of the results, after settings.series_number_base (the single-series pipeline uses 1-3).
SEG_OFFSET, SR_OFFSET, SC_OFFSET = 11, 12, 13
#: Grad-CAM pads the grid to a multiple of this (the UNets' total stride: 2 ** 3 levels; 32 covers deeper ones).
_CAM_MULTIPLE = 32


@dataclass
class StudySegmentation:
    """The model's answer on the reference series: labels (softmax) or overlapping masks (sigmoid)."""

    model_input: ModelInput
    #: Softmax models: uint8 (z, y, x) labels on the reference and their names; else None / {}.
    labels: np.ndarray | None
    label_names: dict[int, str]
    #: Sigmoid models: region name -> bool (z, y, x) on the reference; else {}.
    masks: dict[str, np.ndarray]
    volumes_ml: dict[str, float]
    inference_seconds: float
    #: prepare (resampling, normalisation), network (windows, activation), inverse (back to the reference)
    timings: dict[str, float]

    @property
    def reference(self) -> Volume:
        return self.model_input.reference

    def tumour_mask(self) -> np.ndarray:
        if self.labels is not None:
            return self.labels > 0
        out = np.zeros(self.reference.shape, bool)
        for mask in self.masks.values():
            out |= mask
        return out


def read_volumes(paths: dict[str, list[Any]]) -> dict[str, Volume]:
    volumes = {}
    for role, files in paths.items():
        if not files:
            raise SeriesError(f"the {role} series has no stored instance")
        try:
            datasets = [pydicom.dcmread(p) for p in files]
        except (InvalidDicomError, OSError) as exc:
            raise SeriesError(f"a stored instance of the {role} series cannot be read: {exc}") from exc
        try:
            volumes[role] = load_series(datasets)
        except SeriesError as exc:
            raise SeriesError(f"the {role} series: {exc.message}", code=exc.code) from exc
    return volumes


def segment_study(volumes: dict[str, Volume], model: VolumeSegmenter, *, reference: str | None = None
                  ) -> StudySegmentation:
    """Run ``model`` on the study's ``volumes`` (role -> volume); results on the reference series' voxels."""
    # Imported here: MONAI's transforms take seconds to import, which every process listing the pipelines
    # would pay (the job workers list them at start).
    from neuronova.pipelines.physical import prepare

    for role, volume in volumes.items():
        if volume.modality not in ("MR", ""):
            raise SeriesError(f"the {role} series is {volume.modality}; the model takes MR series")
    started = time.perf_counter()
    model_input = prepare(volumes, roles=model.roles, optional_roles=model.optional_roles,
                          preprocessing=model.preprocessing, reference=reference)
    t_prepared = time.perf_counter()
    probabilities = model_input.restrict(model.infer(model_input.image), activation=model.postprocessing.activation)
    t_inferred = time.perf_counter()
    on_reference = model_input.to_reference(probabilities)
    t_back = time.perf_counter()
    timings = {"prepare_s": round(t_prepared - started, 3), "network_s": round(t_inferred - t_prepared, 3),
               "inverse_s": round(t_back - t_inferred, 3)}
    post = model.postprocessing
    voxel_ml = model_input.reference.voxel_volume_ml
    labels, names, masks, volumes_ml = None, {}, {}, {}
    if post.activation == "softmax":
        labels = on_reference.argmax(0).astype(np.uint8)
        names = {r.index: r.name for r in post.regions}
        counts = np.bincount(labels.ravel(), minlength=on_reference.shape[0])
        volumes_ml = {name: round(float(counts[k]) * voxel_ml, 3) for k, name in names.items()}
        volumes_ml["whole tumour"] = round(float(counts[1:].sum()) * voxel_ml, 3)
    else:
        masks = {r.name: on_reference[r.index] > post.threshold for r in post.regions}
        volumes_ml = {name: round(float(m.sum()) * voxel_ml, 3) for name, m in masks.items()}
    return StudySegmentation(model_input=model_input, labels=labels, label_names=names, masks=masks,
                             volumes_ml=volumes_ml, inference_seconds=time.perf_counter() - started,
                             timings=timings)


class MriTumourStudy(ModelPipeline):
    name = "mri_tumour_study"
    model_id = "mri_tumour_study"
    algorithm_name = "NeuroNova MRI tumour segmentation (study)"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        roles = context.role_series()
        if not roles:
            raise SeriesError("this job names no series roles: mri_tumour_study runs on a study routed by a "
                              "[[study]] rule", code="SERIES_ROLE_MISSING")
        volumes = read_volumes(context.role_paths())
        model = model_for(context, self.model_id, LoadedModel)
        if not isinstance(model, VolumeSegmenter):
            raise ModelNotLoaded(f"model {self.model_id!r} is not a study-level segmentation model")
        self.require_version(model)
        timings["load_s"] = time.perf_counter() - t
        context.progress(20)

        t = time.perf_counter()
        reference = next((r for r, uid in roles.items() if uid == context.job.series_uid), None)
        result = segment_study(volumes, model, reference=reference)
        timings["inference_s"] = time.perf_counter() - t
        context.progress(50)

        t = time.perf_counter()
        cam, xai_error, xai_skipped = None, None, None
        target = model.gradcam_module()
        if target is None:
            xai_skipped = "the model has no torch weights (ONNX only): no Grad-CAM"
        elif result.tumour_mask().any():
            budget = context.settings.xai_time_budget_seconds
            cam, xai_error = try_explain("study segmentation Grad-CAM",
                                         lambda: _explain(result.model_input, target, budget))
        timings["xai_s"] = time.perf_counter() - t
        context.progress(70)

        t = time.perf_counter()
        datasets, stats_summary, keys = _write(context, self.name, self.algorithm_name, model, result, cam)
        timings["write_s"] = time.perf_counter() - t
        context.progress(90)

        inp = result.model_input
        summary: dict[str, Any] = {
            "model_id": model.id, "model_version": model.version,
            "not_for_clinical_use": bool(getattr(getattr(model, "metadata", None), "not_for_clinical_use", True)),
            "inputs": {role: uid for role, uid in roles.items()},
            "reference": {"role": inp.reference_role, "series_uid": inp.reference.series_instance_uid,
                          "shape": list(inp.reference.shape)},
            "zero_filled_roles": list(inp.zero_filled),
            "frame_of_reference_uid": inp.reference.frame_of_reference_uid,
            "model_space": {"axcodes": model.preprocessing.axcodes, "pixdim": model.preprocessing.pixdim,
                            "shape": list(inp.image.shape[1:]), "normalisation": model.preprocessing.normalisation},
            "runtime": {"backend": model.runtime.backend, "device": model.runtime.device},
            "activation": model.postprocessing.activation, "inference_timings": result.timings,
            "volumes_ml": result.volumes_ml, "segments": stats_summary,
            "key_slices": [{"index": z, "sop_instance_uid": inp.reference.datasets[z].SOPInstanceUID} for z in keys],
            "xai": {"method": "grad_cam", "slices": len(keys) if cam is not None else 0,
                    **({"error": xai_error} if xai_error else {}), **({"skipped": xai_skipped} if xai_skipped else {})},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        return PipelineResult(datasets=datasets, summary=summary)


def _explain(model_input: ModelInput, target: tuple[torch.nn.Module, torch.nn.Module], budget: float) -> np.ndarray:
    from neuronova.xai import body_mask, explain_segmentation, restrict_to_body

    module, layer = target
    device = next(module.parameters()).device
    image = model_input.image
    # One forward over the whole grid (the network is fully convolutional), padded to a multiple of the
    # network's total stride with each channel's background value, then cropped back.
    shape = image.shape[1:]
    padded = [int(np.ceil(n / _CAM_MULTIPLE) * _CAM_MULTIPLE) for n in shape]
    big = np.empty((image.shape[0], *padded), np.float32)
    big[:] = image.reshape(image.shape[0], -1).min(1)[:, None, None, None]
    big[:, : shape[0], : shape[1], : shape[2]] = image
    tensor = torch.from_numpy(big[None]).to(device)
    exp = explain_segmentation(module, layer, tensor, time_budget_s=budget, body=False)
    cam = exp.cam[: shape[0], : shape[1], : shape[2]]
    on_reference = model_input.to_reference(cam[None].astype(np.float32))[0]
    # Restricted to the head found in the reference series' own images, as the single-series pipeline does:
    # a mask found on the resampled, padded model grid missed the air the inverse brings back at the edges.
    return restrict_to_body(on_reference, body_mask(model_input.reference.array))


def _write(context: PipelineContext, pipeline: str, algorithm_name: str, model: Any, result: StudySegmentation,
           cam: np.ndarray | None) -> tuple[list[Any], list[dict[str, Any]], list[int]]:
    # Imported here: highdicom is loaded by the workers that write, not by every importer of the pipelines.
    from neuronova.writers.geometry import compute_region_stats, compute_segment_stats
    from neuronova.writers.sc import render_overlay, write_overlay
    from neuronova.writers.seg import write_segmentation
    from neuronova.writers.sr import write_segmentation_report
    from neuronova.xai import key_slices

    algorithm = algorithm_info(model, name=algorithm_name)
    base = context.settings.series_number_base
    reference = result.reference
    sources = reference.datasets
    if result.labels is not None:
        seg = write_segmentation(sources, result.labels, result.label_names, algorithm=algorithm,
                                 series_number=base + SEG_OFFSET, pipeline=pipeline)
        stats = compute_segment_stats(sources, result.labels, result.label_names)
    else:
        from neuronova.writers.seg import write_region_segmentation

        seg = write_region_segmentation(sources, result.masks, algorithm=algorithm, series_number=base + SEG_OFFSET,
                                        pipeline=pipeline)
        stats = compute_region_stats(sources, result.masks)
    sr = write_segmentation_report(sources, seg, stats, algorithm=algorithm, series_number=base + SR_OFFSET,
                                   pipeline=pipeline)
    tumour = result.tumour_mask()
    keys = key_slices(tumour.astype(np.uint8), n=3) if tumour.any() else []
    note = "NOT FOR CLINICAL USE" if algorithm.demo else None
    overlays = []
    for i, z in enumerate(keys):
        gray = reference.array[z]
        lo, hi = np.percentile(gray, [1, 99.5])
        rgb = render_overlay(gray, None if cam is None else cam[z], tumour[z],
                             window=(float((lo + hi) / 2), float(max(hi - lo, 1.0))), note=note)
        overlays.append(write_overlay(sources[z], rgb, algorithm=algorithm, series_number=base + SC_OFFSET,
                                      instance_number=i + 1, pipeline=pipeline,
                                      derivation_description="Grad-CAM heatmap and tumour outline"))
    stats_summary = [{"segment_number": s.segment_number, "label": s.label_name, "volume_ml": round(s.volume_ml, 3)}
                     for s in stats]
    return [seg, sr, *overlays], stats_summary, keys
