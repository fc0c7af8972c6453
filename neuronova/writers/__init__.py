"""DICOM writers: SEG, TID 1500 SR and Secondary Capture results, built with highdicom.

Every object carries Contributing Equipment and algorithm identification, copies patient and study
identity from its source, says "NOT FOR CLINICAL USE" for demo weights, and has UIDs derived from
(source series, pipeline, model version) so that a re-run replaces its results.
"""

from neuronova.writers.common import NOT_FOR_CLINICAL_USE, AlgorithmInfo
from neuronova.writers.geometry import SegmentStat, compute_region_stats, compute_segment_stats, mask_outline
from neuronova.writers.pmap import write_parametric_map
from neuronova.writers.sc import render_overlay, write_overlay
from neuronova.writers.seg import region_segment_numbers, segment_numbers, write_region_segmentation, write_segmentation
from neuronova.writers.sr import write_classification_report, write_segmentation_report
from neuronova.writers.uids import UIDScope, derive_uid, device_uid

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "AlgorithmInfo",
    "SegmentStat",
    "UIDScope",
    "compute_region_stats",
    "compute_segment_stats",
    "derive_uid",
    "device_uid",
    "mask_outline",
    "region_segment_numbers",
    "render_overlay",
    "segment_numbers",
    "write_classification_report",
    "write_overlay",
    "write_parametric_map",
    "write_region_segmentation",
    "write_segmentation",
    "write_segmentation_report",
]
