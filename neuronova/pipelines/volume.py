"""A DICOM series of single-frame slices as one volume with its geometry.

Slices are ordered by their position along the slice normal (row direction x column direction), never by file
order or InstanceNumber, which senders renumber freely. A series that is not one regular stack (mixed
orientations, sizes or spacings, duplicate positions, a missing slice) is refused with a SeriesError that says
what was found, because a model run on such a stack would report volumes and positions that are silently wrong.

The affine follows highdicom's convention: it maps array indices in array order, ``(z, y, x, 1)``, to patient
LPS millimetres, so ``Volume.datasets[k]`` is the source of ``Volume.array[k]`` and a mask computed on the array
maps back to exactly those slices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from neuronova.errors import SeriesError

logger = logging.getLogger(__name__)

_REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData")
_ORIENTATION_TOL = 1e-3  # direction cosines
_POSITION_TOL_MM = 0.01


@dataclass
class Volume:
    """A regular stack of slices. ``array`` is float32 (z, y, x) in modality units (HU for CT)."""

    array: np.ndarray
    affine: np.ndarray  # 4x4: (z, y, x, 1) index -> LPS mm
    spacing: tuple[float, float, float]  # (z, y, x) mm; z is the step along the slice normal
    datasets: list[Dataset]  # datasets[k] is the source of array[k]; empty for a volume not read from DICOM

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", "")) if self.datasets else ""

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].get("SeriesInstanceUID", "")) if self.datasets else ""

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].get("FrameOfReferenceUID", "")) if self.datasets else ""

    @property
    def voxel_volume_ml(self) -> float:
        # the determinant also covers sheared stacks (CT gantry tilt)
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def index_to_patient(self, index: Sequence[float]) -> np.ndarray:
        """(z, y, x) array index -> LPS mm."""
        return (self.affine @ np.array([*index, 1.0]))[:3]


def _read(source: Dataset | str | os.PathLike[str], position: int) -> Dataset:
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(source)
    except (InvalidDicomError, OSError) as exc:
        raise SeriesError(f"instance {position} ({os.fspath(source)!s}) is not readable DICOM: {exc}") from exc


def _check_attributes(datasets: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise SeriesError(f"the instances belong to {len(series)} different series; load one series at a time")
    for i, ds in enumerate(datasets):
        missing = [name for name in _REQUIRED if name not in ds]
        if missing:
            raise SeriesError(f"instance {i} ({ds.get('SOPInstanceUID', '?')}) lacks {', '.join(missing)}")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise SeriesError(f"instance {i} is multi-frame; only single-frame slice series are supported")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise SeriesError(f"instance {i} has {ds.SamplesPerPixel} samples per pixel; a grayscale image is needed")
    first = datasets[0]
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    if len(frames) > 1:
        raise SeriesError(f"the instances use {len(frames)} frames of reference")
    for i, ds in enumerate(datasets[1:], start=1):
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise SeriesError(f"instance {i} is {ds.Rows}x{ds.Columns} pixels, instance 0 is {first.Rows}x{first.Columns}")
        if not np.allclose(np.asarray(ds.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-3):
            raise SeriesError(f"instance {i} has pixel spacing {list(ds.PixelSpacing)}, "
                              f"instance 0 has {list(first.PixelSpacing)}")
        if np.abs(np.asarray(ds.ImageOrientationPatient, float)
                  - np.asarray(first.ImageOrientationPatient, float)).max() > _ORIENTATION_TOL:
            raise SeriesError(f"mixed orientations: instance {i} has ImageOrientationPatient "
                              f"{list(ds.ImageOrientationPatient)}, instance 0 has {list(first.ImageOrientationPatient)}")


def _sort_and_check_positions(datasets: Sequence[Dataset], spacing_tolerance: float) -> tuple[list[int], np.ndarray]:
    """Order along the normal; returns the order and the step vector between consecutive slices (mm)."""
    orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise SeriesError(f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors")
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    distance = positions @ normal
    order = [int(i) for i in np.argsort(distance, kind="stable")]
    if len(order) == 1:
        thickness = float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
        return order, normal * thickness
    d = distance[order]
    steps = np.diff(d)
    if steps.min() < _POSITION_TOL_MM:
        k = int(np.argmin(steps))
        raise SeriesError(f"two instances lie at the same position ({d[k]:.2f} mm along the normal): duplicate "
                          "slices or several acquisitions in one series")
    expected = float(np.median(steps))
    bad = np.abs(steps - expected) > max(_POSITION_TOL_MM, spacing_tolerance * expected)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        hint = " (a missing slice?)" if steps[k] > expected else ""
        raise SeriesError(f"uneven slice spacing: {steps[k]:.3f} mm between slices at {d[k]:.2f} and {d[k + 1]:.2f} mm "
                          f"along the normal, where the series spacing is {expected:.3f} mm{hint}")
    sorted_positions = positions[order]
    step = (sorted_positions[-1] - sorted_positions[0]) / (len(order) - 1)
    line = sorted_positions[0] + np.arange(len(order))[:, None] * step
    off_line = np.linalg.norm(sorted_positions - line, axis=1).max()
    if off_line > max(0.1, spacing_tolerance * expected):
        raise SeriesError(f"the slice positions do not lie on one line (off by {off_line:.2f} mm)")
    return order, step


def load_series(sources: Sequence[Dataset | str | os.PathLike[str]], *, spacing_tolerance: float = 0.05) -> Volume:
    """Build a Volume from the instances of one series (datasets or file paths, any order).

    ``spacing_tolerance`` is the relative deviation allowed between slice steps. Raises SeriesError when the
    instances do not form one regular stack.
    """
    if not sources:
        raise SeriesError("the series has no instances")
    datasets = [_read(s, i) for i, s in enumerate(sources)]
    _check_attributes(datasets)
    order, step = _sort_and_check_positions(datasets, spacing_tolerance)
    datasets = [datasets[i] for i in order]

    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = orientation[3:] * row_spacing
    affine[:3, 2] = orientation[:3] * col_spacing
    affine[:3, 3] = np.asarray(first.ImagePositionPatient, float)

    array = np.empty((len(datasets), int(first.Rows), int(first.Columns)), np.float32)
    for k, ds in enumerate(datasets):
        try:
            array[k] = apply_modality_lut(ds.pixel_array, ds)
        except Exception as exc:  # pixel decoders raise many types; all mean "cannot decode this slice"
            raise SeriesError(f"cannot decode the pixels of instance {ds.get('SOPInstanceUID', k)}: {exc}") from exc
    slice_spacing = float(abs(step @ np.cross(orientation[:3], orientation[3:])))
    logger.debug("loaded %d slices %dx%d, spacing %.3f/%.3f/%.3f mm", len(datasets), first.Rows, first.Columns,
                 slice_spacing, row_spacing, col_spacing)
    return Volume(array=array, affine=affine, spacing=(slice_spacing, row_spacing, col_spacing), datasets=datasets)
