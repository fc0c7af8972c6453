"""``mri_segmentation``: MR series -> tumour labels -> SEG, TID 1500 SR, Grad-CAM captures and map.

Steps: read the series as a volume; segment (labels in the source geometry); explain (segmentation Grad-CAM
of the written labels through the inference's own sliding windows, restricted to the head, within the time
budget); write the SEG, the measurement report referencing it, an overlay of each key slice (the heatmap
and the tumour outline over the slice) and the whole map as a Parametric Map a viewer can lay over the series.

Why the whole volume in the Parametric Map (one frame per source slice) rather than the key slices: the map
is 3-D, and a viewer overlays a parametric map on the series it was derived from as a volume, which needs
every slice; the key slices are already in the secondary captures. The price is size: float32 is 4 bytes
per voxel, twice a 16-bit MR series (about 40 MB for 155 slices of 256 x 256).

Why the first decoder block and not the model's default Grad-CAM layer (the bottleneck): see
``neuronova.xai.unet_first_decoder``; the map at the bottleneck spreads over the hemisphere.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from neuronova.models.segmentation import SegmentationModel, labels_to_grid
from neuronova.pipelines.inference import segment_volume
from neuronova.pipelines.registry import PipelineContext, PipelineResult
from neuronova.pipelines.steps import ModelPipeline, algorithm_info, try_explain
from neuronova.pipelines.volume import Volume
from neuronova.writers.geometry import compute_segment_stats
from neuronova.writers.pmap import write_parametric_map
from neuronova.writers.sc import render_overlay, write_overlay
from neuronova.writers.seg import write_segmentation
from neuronova.writers.sr import write_segmentation_report
from neuronova.xai import (
    SegmentationExplanation,
    body_mask,
    explain_segmentation_windows,
    key_slices,
    unet_first_decoder,
)

#: Series numbers of the results, after settings.series_number_base (ct_classification uses 4 and 5).
SEG_OFFSET, SR_OFFSET, SC_OFFSET, PMAP_OFFSET = 1, 2, 3, 6
SC_DESCRIPTION = "AI Grad-CAM tumour"
PMAP_DESCRIPTION = "AI Grad-CAM map"


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
            return explain_written_labels(volume, model, result.labels, time_budget_s=budget).cam

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
        overlays = []
        for i, z in enumerate(keys[:3]):
            source = sources[z]
            gray = volume.array[z]
            # The map is scaled to the volume's peak, so a key slice may hold little heat (transparent below
            # 0.2): the note says how much, so an empty-looking overlay reads as "little relevance here".
            # write_overlay burns the demo warning into the top band.
            note = None if cam is None else f"Grad-CAM max here {float(cam[z].max()):.2f} of 1"
            rgb = render_overlay(gray, None if cam is None else cam[z], result.labels[z] > 0,
                                 window=_window(gray), note=note)
            overlays.append(write_overlay(source, rgb, algorithm=algorithm, series_number=base + SC_OFFSET,
                                          instance_number=i + 1, pipeline=self.name,
                                          series_description=SC_DESCRIPTION,
                                          derivation_description="Grad-CAM heatmap and tumour outline"))
        maps = []
        if cam is not None:
            maps.append(write_parametric_map(sources, cam, algorithm=algorithm, series_number=base + PMAP_OFFSET,
                                             pipeline=self.name, series_description=PMAP_DESCRIPTION))
        timings["write_s"] = time.perf_counter() - t
        context.progress(90)

        summary: dict[str, Any] = {
            "model_id": model.id, "model_version": model.version, "not_for_clinical_use": algorithm.demo,
            "volumes_ml": result.volumes_ml, "label_names": {str(k): v for k, v in result.label_names.items()},
            "key_slices": [{"index": z, "sop_instance_uid": sources[z].SOPInstanceUID} for z in keys[:3]],
            "xai": {"method": "grad_cam", "slices": len(overlays) if cam is not None else 0,
                    "parametric_map": bool(maps), **({"error": xai_error} if xai_error else {})},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        return PipelineResult(datasets=[seg, sr, *overlays, *maps], summary=summary)


def explain_written_labels(volume: Volume, model: SegmentationModel, labels: np.ndarray, *,
                           time_budget_s: float | None = None) -> SegmentationExplanation:
    """Grad-CAM of the labels written into the SEG, on the source geometry, restricted to the head.

    The labels go back to the model grid (each cell's majority label: the inverse of the nearest-neighbour
    mapping that wrote them), the map is computed through the same windows as the prediction, upsampled to
    the source volume and restricted to the head found in the source images themselves.
    """
    net = model.torch_module()
    grid_labels = labels_to_grid(labels, model.grid, max(model.label_names, default=0) + 1)
    return explain_segmentation_windows(
        net, unet_first_decoder(net), model.as_tensor(model.preprocess(volume.array)), grid_labels,
        roi_size=model.window, overlap=model.overlap, sw_batch_size=model.sw_batch_size, mode="gaussian",
        output_shape=volume.shape, body=body_mask(volume.array), time_budget_s=time_budget_s)


def _window(gray: np.ndarray) -> tuple[float, float]:
    """An MR display window from the slice's own intensities (MR has no absolute scale)."""
    lo, hi = np.percentile(gray, [1, 99.5])
    return float((lo + hi) / 2), float(max(hi - lo, 1.0))
