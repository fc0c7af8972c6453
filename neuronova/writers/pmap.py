"""Grad-CAM maps as DICOM Parametric Maps: float values a viewer can overlay on the source and window.

A secondary capture is a picture: its colours are burned in and a viewer can neither window it nor lay it
over the series. A Parametric Map (highdicom ``hd.pm.ParametricMap``) carries the map itself, float32,
frame by frame in the source's geometry (same frame of reference, positions, orientation and pixel
spacing), with a Real World Value Mapping that says what the numbers are: "Grad-CAM", no units, 0 (no
relevance, and everything outside the body) to 1 (the region that drove the result).

One frame per source slice: the caller decides which slices (the whole MR volume, whose map is 3-D and
which viewers overlay as a volume, or the one CT slice that was explained) and passes their datasets with
the map, ``values[k]`` belonging to ``source_images[k]``; highdicom stores the frames in spatial order, each
with its position and a reference to its source slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from neuronova.writers.common import (
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    check_int,
    check_source_images,
    equipment_kwargs,
    finish_equipment,
)
from neuronova.writers.common import (
    series_description as make_series_description,
)

logger = logging.getLogger(__name__)

KIND = "pmap"
LUT_LABEL = "Grad-CAM"
DEFAULT_SERIES_DESCRIPTION = "AI Grad-CAM map"


def write_parametric_map(
    source_images: Sequence[Dataset],
    values: np.ndarray,
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    pipeline: str | None = None,
    series_description: str | None = None,
    explanation: str = "Grad-CAM relevance of the voxels for the model's result, 1 at the most relevant",
) -> hd.pm.ParametricMap:
    """A float32 Parametric Map of ``values`` (frames, rows, columns) in [0, 1], frame k on ``source_images[k]``.

    The source images are single-frame slices of one series (any order; frame k takes the position of
    ``source_images[k]``). Raises TypeError/ValueError for inputs that would not make a valid object.
    """
    sources = check_source_images(source_images)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, found {type(algorithm).__name__}")
    series_number = check_int("series_number", series_number)
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, found {type(values).__name__}")
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"values must be floating point, found dtype {values.dtype}")
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if values.shape != expected:
        raise ValueError(f"values must have shape (frames, rows, columns) = {expected}, found {values.shape}")
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"values must be finite and in [0, 1], found [{np.nanmin(values)}, {np.nanmax(values)}]")
    if not isinstance(explanation, str) or not explanation.strip():
        raise TypeError("explanation must be a non-empty str")
    for i, ds in enumerate(sources):
        missing = [kw for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if kw not in ds]
        if missing:
            raise ValueError(f"source_images[{i}] lacks {', '.join(missing)}: a map needs the source geometry")

    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=explanation[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    scope = algorithm.uid_scope(str(sources[0].SeriesInstanceUID), pipeline)
    description = make_series_description(series_description, DEFAULT_SERIES_DESCRIPTION, algorithm)
    pmap = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=np.ascontiguousarray(values, dtype=np.float32),
        series_instance_uid=scope.series(KIND),
        series_number=series_number,
        sop_instance_uid=scope.instance(KIND, 1),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=0.5, window_width=1.0, window_explanation="Grad-CAM 0 to 1")
        ],
        # NONE: ImageType value 4 that dicom3tools knows (it warns on highdicom's default QUANTITY)
        derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
        content_label="GRADCAM",
        content_description=f"{LUT_LABEL} relevance map"[:64],
        contributing_equipment=[algorithm.contributing_equipment()],
        **equipment_kwargs(algorithm),  # type: ignore[arg-type]
    )
    pmap.SeriesDescription = description
    finish_equipment(pmap, sources[0], algorithm)
    derivation = f"Grad-CAM by {algorithm.name} {algorithm.version}"
    if algorithm.demo:
        derivation += f" (demonstration weights, {NOT_FOR_CLINICAL_USE})"
    pmap.DerivationDescription = derivation[:1024]
    logger.info("Grad-CAM parametric map written: %d frames of %dx%d, series number %d", *values.shape,
                series_number)
    return pmap
