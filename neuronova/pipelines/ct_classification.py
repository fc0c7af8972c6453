"""``ct_classification``: CT series -> tumour type -> TID 1500 SR and a Grad-CAM secondary capture.

Steps: read the series as a volume (HU); classify every slice with enough brain and aggregate (the model's
``classify_volume``: the slice with the most tumour evidence drives the result); explain the driving slice
with Grad-CAM (within the time budget); write the report (coded finding, probabilities, the driving
slice and its important regions) and the overlay of the driving slice in the brain window.

Probabilities are calibrated (the model's temperature); below the model's ``indeterminate_below`` the outcome
is "Indeterminate": the report's finding and the summary's ``outcome`` say so, the summary keeps the most
likely class in ``predicted_class`` and Grad-CAM still explains that class.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from neuronova.models.classification import BRAIN_WINDOW, ClassificationModel
from neuronova.pipelines.inference import classify_ct_series, gradcam_inputs_for_ct_slice
from neuronova.pipelines.registry import PipelineContext, PipelineResult
from neuronova.pipelines.steps import ModelPipeline, algorithm_info, try_explain
from neuronova.writers.pmap import write_parametric_map
from neuronova.writers.sc import render_overlay, write_overlay
from neuronova.writers.sr import write_classification_report
from neuronova.xai import (explain_classification, heatmap_on_image, important_regions, resize_heatmap,
                           to_patient_coordinates)

SR_OFFSET, SC_OFFSET, PMAP_OFFSET = 4, 5, 7


class CtClassification(ModelPipeline):
    name = "ct_classification"
    model_id = "ct_classification"
    algorithm_name = "NeuroNova CT tumour classification"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        timings: dict[str, float] = {}
        volume, model = self.load(context, ClassificationModel, timings)

        t = time.perf_counter()
        result = classify_ct_series(volume, model)
        timings["inference_s"] = time.perf_counter() - t
        context.progress(50)

        z = result.driving_slice_index
        source = volume.datasets[z]
        target = model.classes.index(result.predicted_class)
        t = time.perf_counter()

        def explain() -> np.ndarray:
            inputs = gradcam_inputs_for_ct_slice(volume, z, model, target_class=target)
            exp = explain_classification(inputs.module, inputs.target_layers[0], inputs.input_tensor,
                                         target_class=target,
                                         time_budget_s=context.settings.xai_time_budget_seconds)
            image = volume.array[z]
            if image.shape[0] == image.shape[1]:  # the network saw the slice resized, unpadded: map it back
                return heatmap_on_image(exp.heatmap, image)  # and keep it on the head (no weight on air)
            return resize_heatmap(exp.heatmap, image.shape)

        heat, xai_error = try_explain("classification Grad-CAM", explain)
        regions = important_regions(heat) if heat is not None else []
        timings["xai_s"] = time.perf_counter() - t
        context.progress(70)

        t = time.perf_counter()
        algorithm = algorithm_info(model, name=self.algorithm_name)
        base = context.settings.series_number_base
        sr = write_classification_report(
            volume.datasets, predicted_class=result.outcome, probabilities=result.probabilities,
            driving_slice_index=z, regions=[(r.x, r.y, r.width, r.height, r.importance) for r in regions],
            algorithm=algorithm, series_number=base + SR_OFFSET, pipeline=self.name)
        rgb = render_overlay(volume.array[z], heat, None, window=BRAIN_WINDOW,
                             note="NOT FOR CLINICAL USE" if algorithm.demo else None)
        sc = write_overlay(source, rgb, algorithm=algorithm, series_number=base + SC_OFFSET, instance_number=1,
                           pipeline=self.name, derivation_description="Grad-CAM heatmap of the driving slice")
        # The map itself, float and windowable in a viewer, on the driving slice.
        maps = [] if heat is None else [write_parametric_map(
            [source], heat[None].astype(np.float32), algorithm=algorithm, series_number=base + PMAP_OFFSET,
            pipeline=self.name, series_description="AI Grad-CAM CT map")]
        timings["write_s"] = time.perf_counter() - t
        context.progress(90)

        patient_regions = []
        for r in regions:
            p = to_patient_coordinates(r, image_position=source.ImagePositionPatient,
                                       image_orientation=source.ImageOrientationPatient,
                                       pixel_spacing=source.PixelSpacing)
            patient_regions.append({**r.to_dict(), "centre_mm": [round(float(v), 2) for v in p.centre]})
        summary: dict[str, Any] = {
            "model_id": model.id, "model_version": model.version, "not_for_clinical_use": algorithm.demo,
            "predicted_class": result.predicted_class, "outcome": result.outcome,
            "indeterminate": result.indeterminate, "confidence": round(result.confidence, 4),
            "calibration": {"method": "temperature scaling", "temperature": round(model.temperature, 4),
                            "indeterminate_below": model.indeterminate_below},
            "probabilities": {k: round(v, 4) for k, v in result.probabilities.items()},
            "driving_slice": {"index": z, "sop_instance_uid": source.SOPInstanceUID},
            "xai": {"method": "grad_cam", "important_regions": patient_regions,
                    **({"error": xai_error} if xai_error else {})},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        summary["xai"]["parametric_map"] = bool(maps)
        return PipelineResult(datasets=[sr, sc, *maps], summary=summary)
