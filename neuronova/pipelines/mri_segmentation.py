"""``mri_segmentation``: MR series -> tumour labels -> SEG, TID 1500 SR, Grad-CAM secondary captures.

Steps: read the series as a volume; segment (labels in the source geometry); explain (segmentation Grad-CAM,
within the time budget); write the SEG, the measurement report referencing it, and an overlay of each key
slice (the heatmap and the tumour outline over the slice).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from neuronova.models.segmentation import SegmentationModel
from neuronova.pipelines.inference import gradcam_inputs_for_volume, segment_volume
from neuronova.pipelines.registry import PipelineContext, PipelineResult
from neuronova.pipelines.steps import ModelPipeline, algorithm_info, try_explain
from neuronova.writers.geometry import compute_segment_stats
from neuronova.writers.sc import render_overlay, write_overlay
from neuronova.writers.seg import write_segmentation
from neuronova.writers.sr import write_segmentation_report
from neuronova.xai import explain_segmentation, key_slices

#: Series numbers of the results, after settings.series_number_base.
SEG_OFFSET, SR_OFFSET, SC_OFFSET = 1, 2, 3


class MriSegmentation(ModelPipeline):
    name = "mri_segmentation"
    model_id = "mri_segmentation"
    algorithm_name = "NeuroNova MRI tumour segmentation"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        timings: dict[str, float] = {}
        volume, model = self.load(context, SegmentationModel, timings)

        t = time.perf_counter()
        result = segment_volume(volume, model)
        timings["inference_s"] = time.perf_counter() - t
        context.progress(50)

        t = time.perf_counter()
        budget = context.settings.xai_time_budget_seconds

        def explain() -> np.ndarray:
            inputs = gradcam_inputs_for_volume(volume, model)
            exp = explain_segmentation(inputs.module, inputs.target_layers[0], inputs.input_tensor,
                                       output_shape=volume.shape, time_budget_s=budget)
            return exp.cam

        cam, xai_error = try_explain("segmentation Grad-CAM", explain) if result.key_slice_indices else (None, None)
        timings["xai_s"] = time.perf_counter() - t
        context.progress(70)

        t = time.perf_counter()
        algorithm = algorithm_info(model, name=self.algorithm_name)
        base = context.settings.series_number_base
        sources = volume.datasets
        seg = write_segmentation(sources, result.labels, result.label_names, algorithm=algorithm,
                                 series_number=base + SEG_OFFSET, pipeline=self.name)
        stats = compute_segment_stats(sources, result.labels, result.label_names)
        sr = write_segmentation_report(sources, seg, stats, algorithm=algorithm, series_number=base + SR_OFFSET,
                                       pipeline=self.name)
        keys = result.key_slice_indices or (key_slices(cam, n=3) if cam is not None else [])
        note = "NOT FOR CLINICAL USE" if algorithm.demo else None
        overlays = []
        for i, z in enumerate(keys[:3]):
            source = sources[z]
            gray = volume.array[z]
            rgb = render_overlay(gray, None if cam is None else cam[z], result.labels[z] > 0,
                                 window=_window(gray), note=note)
            overlays.append(write_overlay(source, rgb, algorithm=algorithm, series_number=base + SC_OFFSET,
                                          instance_number=i + 1, pipeline=self.name,
                                          derivation_description="Grad-CAM heatmap and tumour outline"))
        timings["write_s"] = time.perf_counter() - t
        context.progress(90)

        summary: dict[str, Any] = {
            "model_id": model.id, "model_version": model.version, "not_for_clinical_use": algorithm.demo,
            "volumes_ml": result.volumes_ml, "label_names": {str(k): v for k, v in result.label_names.items()},
            "key_slices": [{"index": z, "sop_instance_uid": sources[z].SOPInstanceUID} for z in keys[:3]],
            "xai": {"method": "grad_cam", "slices": len(overlays) if cam is not None else 0,
                    **({"error": xai_error} if xai_error else {})},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        return PipelineResult(datasets=[seg, sr, *overlays], summary=summary)


def _window(gray: np.ndarray) -> tuple[float, float]:
    """An MR display window from the slice's own intensities (MR has no absolute scale)."""
    lo, hi = np.percentile(gray, [1, 99.5])
    return float((lo + hi) / 2), float(max(hi - lo, 1.0))
