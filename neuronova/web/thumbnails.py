"""Stored image instances (the result overlays: secondary captures) as small PNGs for the status page."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from neuronova.errors import InvalidRequest

#: The longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 320


def thumbnail_png(path: Path, *, size: int = THUMBNAIL_SIZE) -> bytes:
    """The instance's first frame as a PNG at most ``size`` pixels on its longest side: RGB as is, grayscale
    scaled to 8 bits by its window (or its range). InvalidRequest for an instance without pixel data."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise InvalidRequest("the instance has no pixel data")
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(ds.SamplesPerPixel) == 3:
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")
    else:
        image = Image.fromarray(_to_8bit(ds, pixels), mode="L")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _to_8bit(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0)
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = float(values.min()), float(values.max())
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled.astype(np.uint8)
