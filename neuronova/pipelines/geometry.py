"""``series_geometry``: a trivial pipeline that records where a series lies, and nothing more.

It reads the headers of the series' files (no pixels) and reports the orientation, pixel and slice spacing,
slice count and extent in its summary. It writes no DICOM object and runs no model: it exists to prove the
job mechanics end to end, and to tell an operator what the router saw. Also home of :func:`plane_of`, the
axial/sagittal/coronal classification the routing rules use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from neuronova.errors import SeriesError
from neuronova.pipelines.registry import PipelineContext, PipelineResult

log = logging.getLogger(__name__)

#: The plane whose normal is closest to the slice normal, when the cosine is at least this (about 37 degrees);
#: below it the slices are "oblique".
PLANE_COSINE = 0.8
_PLANES = ("sagittal", "coronal", "axial")  # normal along x (left-right), y (anterior-posterior), z (head-feet)
_ORIENTATION_TOL = 1e-3


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal (row x column direction cosines) of an ImageOrientationPatient value."""
    values = np.asarray([float(v) for v in iop], dtype=float)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient has 6 values, found {len(values)}")
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ValueError(f"ImageOrientationPatient rows and columns are parallel: {list(values)}")
    return normal / length


def plane_of(iop: Sequence[float]) -> str:
    """"axial", "sagittal", "coronal" or "oblique" for an ImageOrientationPatient value."""
    normal = np.abs(slice_normal(iop))
    axis = int(np.argmax(normal))
    return _PLANES[axis] if normal[axis] >= PLANE_COSINE else "oblique"


@dataclass(frozen=True)
class _Frame:
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    thickness: float | None


def _first(ds: Dataset, seq: str, item: str) -> Dataset | None:
    outer = ds.get(seq)
    if not outer:
        return None
    inner = outer[0].get(item)
    return inner[0] if inner else None


def frames_of(ds: Dataset) -> Iterator[_Frame]:
    """The geometry of each frame: classic single-frame attributes, or enhanced multi-frame functional groups."""
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        spacing = ds.get("PixelSpacing") or [1.0, 1.0]
        thickness = ds.get("SliceThickness")
        yield _Frame(tuple(float(v) for v in ds.ImageOrientationPatient),
                     tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
                     (float(spacing[0]), float(spacing[1])), float(thickness) if thickness not in (None, "") else None)
        return
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for group in per_frame:
        shared = ds.get("SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared else Dataset()

        def find(seq: str, item: Dataset = group, fallback: Dataset = shared_item) -> Dataset | None:
            value = item.get(seq) or fallback.get(seq)
            return value[0] if value else None

        orientation, position, measures = (find("PlaneOrientationSequence"), find("PlanePositionSequence"),
                                           find("PixelMeasuresSequence"))
        if orientation is None or position is None:
            continue
        spacing = (measures.get("PixelSpacing") if measures is not None else None) or [1.0, 1.0]
        thickness = measures.get("SliceThickness") if measures is not None else None
        yield _Frame(tuple(float(v) for v in orientation.ImageOrientationPatient),
                     tuple(float(v) for v in position.ImagePositionPatient),  # type: ignore[arg-type]
                     (float(spacing[0]), float(spacing[1])), float(thickness) if thickness not in (None, "") else None)


def describe(headers: Sequence[Dataset]) -> dict[str, Any]:
    """The geometry summary of a series' headers (raises SeriesError when no frame has a position)."""
    frames = [f for ds in headers for f in frames_of(ds)]
    if not frames:
        raise SeriesError("no instance of the series has ImagePositionPatient/ImageOrientationPatient")
    first = headers[0]
    orientation = frames[0].orientation
    consistent = all(np.allclose(f.orientation, orientation, atol=_ORIENTATION_TOL) for f in frames)
    normal = slice_normal(orientation)
    along = sorted(float(np.dot(normal, f.position)) for f in frames)
    steps = np.diff(along)
    spacing = float(np.median(steps)) if len(steps) else None
    uniform = bool(len(steps) == 0 or (spacing and np.all(np.abs(steps - spacing) <= max(0.01, 0.01 * spacing))))
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    row_spacing, col_spacing = frames[0].pixel_spacing
    span = along[-1] - along[0]
    depth = span + (spacing if spacing else (frames[0].thickness or 0.0))
    return {
        "modality": str(first.get("Modality", "")),
        "orientation": plane_of(orientation) if consistent else "mixed",
        "image_orientation_patient": [round(v, 6) for v in orientation],
        "orientation_consistent": consistent,
        "instances": len(headers),
        "slice_count": len(frames),
        "rows": rows,
        "columns": cols,
        "pixel_spacing_mm": [row_spacing, col_spacing],
        "slice_spacing_mm": round(spacing, 4) if spacing is not None else None,
        "slice_spacing_uniform": uniform,
        "duplicate_positions": int(np.sum(np.abs(steps) < 1e-3)) if len(steps) else 0,
        "slice_thickness_mm": frames[0].thickness,
        # columns run along the row direction: width = columns x column spacing (PixelSpacing[1])
        "extent_mm": [round(cols * col_spacing, 3), round(rows * row_spacing, 3), round(depth, 3)],
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")) or None,
    }


class SeriesGeometry:
    """Records the geometry of a series in the job's summary; returns no DICOM object."""

    name = "series_geometry"
    version = "1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        paths = context.instance_paths()
        if not paths:
            raise SeriesError("the series has no stored instances")
        headers = []
        for k, path in enumerate(paths):
            try:
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
            except (InvalidDicomError, OSError) as exc:
                raise SeriesError(f"instance {k + 1} of the series is not readable: {type(exc).__name__}") from exc
            if (k + 1) % max(1, len(paths) // 10) == 0:
                context.progress(90.0 * (k + 1) / len(paths))
        return PipelineResult(datasets=[], summary=describe(headers))
