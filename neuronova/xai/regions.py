"""The regions of a heatmap that drove a prediction, in pixels and in patient coordinates.

Pixel conventions: ``x`` is the column and ``y`` the row of the top-left pixel of a region's bounding box,
``width``/``height`` count pixels. :meth:`Region.polyline` gives the box in DICOM SCOORD image
coordinates (PS3.3 C.18.6.1.1: the top-left corner of the top-left pixel is (0, 0), so its centre is
(0.5, 0.5)). Patient coordinates follow PS3.3 C.7.6.2.1.1: Image Position (Patient) is the centre of the
first pixel, the first Image Orientation vector points along a row (increasing column), and Pixel Spacing
is (spacing between rows, spacing between columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Region:
    x: int  #: column of the bounding box's left pixel
    y: int  #: row of the bounding box's top pixel
    width: int
    height: int
    importance: float  #: highest heat in the region, in [0, 1]
    mean_heat: float  #: mean heat over the region's pixels (not over its box)
    area: int  #: pixels in the region

    def polyline(self) -> list[tuple[float, float]]:
        """The bounding box as a closed DICOM SCOORD POLYLINE of (column, row) points."""
        left, top, right, bottom = float(self.x), float(self.y), float(self.x + self.width), float(self.y + self.height)
        return [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]

    def to_dict(self) -> dict[str, float | int]:
        return {
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
            "importance": round(self.importance, 4),
            "mean_heat": round(self.mean_heat, 4),
            "area": self.area,
        }


@dataclass(frozen=True)
class PatientRegion:
    """A region's bounding box in patient coordinates (LPS, mm)."""

    corners: np.ndarray  #: (4, 3): outer corners top-left, top-right, bottom-right, bottom-left
    centre: np.ndarray  #: (3,): centre of the box
    width_mm: float  #: along the rows
    height_mm: float  #: along the columns


def important_regions(heatmap: np.ndarray, *, threshold: float = 0.5, max_regions: int = 5) -> list[Region]:
    """Connected regions (8-connected) where ``heatmap >= threshold``, most important first.

    Ranked by their highest heat, then by area. An all-zero heatmap (no evidence) gives no region.
    """
    heat = np.asarray(heatmap)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {heat.shape}")
    if not np.issubdtype(heat.dtype, np.number) or not np.all(np.isfinite(heat)):
        raise ValueError("the heatmap must be finite numbers")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if max_regions < 1:
        raise ValueError(f"max_regions must be at least 1, got {max_regions}")
    labels, count = ndimage.label(heat >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(heat, labels, index)
    means = ndimage.mean(heat, labels, index)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    regions = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        rows, cols = box
        regions.append(
            Region(
                x=int(cols.start),
                y=int(rows.start),
                width=int(cols.stop - cols.start),
                height=int(rows.stop - rows.start),
                importance=float(peaks[i]),
                mean_heat=float(means[i]),
                area=int(areas[i]),
            )
        )
    regions.sort(key=lambda r: (-r.importance, -r.area))
    return regions[:max_regions]


def to_patient_coordinates(
    region: Region,
    *,
    image_position: Sequence[float],
    image_orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> PatientRegion:
    """Map a region of a slice's pixel grid to patient coordinates (mm, LPS).

    ``image_position`` is the slice's Image Position (Patient), ``image_orientation`` its Image
    Orientation (Patient), ``pixel_spacing`` its Pixel Spacing (row spacing, column spacing); the region
    must be in that slice's pixel grid (resize the heatmap to the slice first: images.resize_heatmap).
    """
    origin = np.asarray(image_position, dtype=np.float64)
    orientation = np.asarray(image_orientation, dtype=np.float64)
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    if origin.shape != (3,) or orientation.shape != (6,) or spacing.shape != (2,):
        raise ValueError(
            "expected 3 image position, 6 image orientation and 2 pixel spacing values, got "
            f"{origin.size}, {orientation.size} and {spacing.size}"
        )
    if np.any(spacing <= 0):
        raise ValueError(f"pixel spacing must be positive, got {spacing.tolist()}")
    along_row, along_column = orientation[:3], orientation[3:]
    if not (np.isclose(np.linalg.norm(along_row), 1, atol=1e-3) and np.isclose(np.linalg.norm(along_column), 1, atol=1e-3)):
        raise ValueError(f"image orientation vectors must be unit vectors, got {orientation.tolist()}")
    row_spacing, column_spacing = spacing

    def point(column: float, row: float) -> np.ndarray:
        return origin + along_row * column_spacing * column + along_column * row_spacing * row

    # Outer edges: half a pixel outside the centres of the first and last pixels.
    left, right = region.x - 0.5, region.x + region.width - 0.5
    top, bottom = region.y - 0.5, region.y + region.height - 0.5
    corners = np.stack([point(left, top), point(right, top), point(right, bottom), point(left, bottom)])
    return PatientRegion(
        corners=corners,
        centre=point((left + right) / 2, (top + bottom) / 2),
        width_mm=float(region.width * column_spacing),
        height_mm=float(region.height * row_spacing),
    )
