"""Secondary Capture overlays (heatmaps, outlines) of a source slice, as RGB SC images.

``render_overlay`` makes the picture (windowed grey image, jet heatmap that is transparent where low and
lets the anatomy show through where high, segmentation outline, a note);
``write_overlay`` wraps it in a highdicom SCImage that references its source slice and, for demo
weights, carries a burned-in "NOT FOR CLINICAL USE".
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from neuronova.writers.common import (
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    check_int,
    check_source_images,
    finish_equipment,
    equipment_kwargs,
    series_description as make_series_description,
)
from neuronova.xai.images import OVERLAY_ALPHA, blend_heatmap

logger = logging.getLogger(__name__)

KIND = "sc"
_OUTLINE_RGB = (255, 255, 0)
_TEXT_RGB = (255, 40, 40)


def _check_image(name: str, array: object, *, ndim: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, found {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D, found shape {array.shape}")
    return array


def window_image(gray2d: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Grey values to [0, 1]: by (center, width), or the 1st-99th percentile range when window is None."""
    gray = gray2d.astype(np.float64)
    if window is None:
        low, high = np.percentile(gray, [1.0, 99.0]) if gray.size else (0.0, 1.0)
    else:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"window must be (center, width), found {window!r}")
        center, width = (float(v) for v in window)
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            raise ValueError(f"window must have a finite center and a positive width, found {window!r}")
        low, high = center - width / 2.0, center + width / 2.0
    if high <= low:
        return np.zeros_like(gray)
    return np.clip((gray - low) / (high - low), 0.0, 1.0)


def _draw_text(rgb: np.ndarray, text: str, *, top: bool) -> np.ndarray:
    """Text on a black band at the top or bottom; the band keeps it legible over any image."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    columns, rows = image.size
    # Pillow's bundled font scales with FreeType; shrink until the text fits the width.
    size = max(6, rows // 14)
    while True:
        font = ImageFont.load_default(size=size)
        left, upper, right, lower = draw.textbbox((0, 0), text, font=font)
        if right - left <= columns - 4 or size <= 6:
            break
        size -= 1
    height = lower - upper
    y = 2 if top else rows - height - 2
    draw.rectangle((0, y - 2, columns - 1, y + height + 1), fill=(0, 0, 0))
    if size < 12:
        draw.fontmode = "1"  # antialiasing would blur a few-pixel glyph into dark red
    draw.text((2 - left, y - upper), text, fill=_TEXT_RGB, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def render_overlay(
    gray2d: np.ndarray,
    heat: np.ndarray | None = None,
    outline_mask: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None = None,
    note: str | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """An RGB uint8 picture: the windowed grey slice, a jet heatmap blended over it, the mask outline.

    ``heat`` holds values in [0, 1] (Grad-CAM style) and ``outline_mask`` booleans, both shaped like
    ``gray2d``. The heatmap's opacity rises from 0 (heat at or below 0.2) to ``alpha`` at heat 1
    (neuronova.xai.images.blend_heatmap), so the grey image stays readable. ``note`` is written at the bottom.
    """
    from scipy import ndimage

    gray2d = _check_image("gray2d", gray2d, ndim=2)
    if not np.issubdtype(gray2d.dtype, np.number) or gray2d.dtype == np.bool_:
        raise TypeError(f"gray2d must hold numbers, found dtype {gray2d.dtype}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], found {alpha}")
    grey = window_image(gray2d, window)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if heat is not None:
        heat = _check_image("heat", heat, ndim=2)
        if heat.shape != gray2d.shape:
            raise ValueError(f"heat must have the shape of gray2d {gray2d.shape}, found {heat.shape}")
        if not np.isfinite(heat).all() or heat.min() < 0.0 or heat.max() > 1.0:
            raise ValueError(f"heat must hold finite values in [0, 1], found [{np.nanmin(heat)}, {np.nanmax(heat)}]")
        rgb = blend_heatmap(rgb, heat, alpha=alpha)
    out = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    if outline_mask is not None:
        outline_mask = _check_image("outline_mask", outline_mask, ndim=2)
        if outline_mask.shape != gray2d.shape:
            raise ValueError(f"outline_mask must have the shape of gray2d {gray2d.shape}, found {outline_mask.shape}")
        mask = outline_mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        out[edge] = _OUTLINE_RGB
    if note:
        if not isinstance(note, str):
            raise TypeError(f"note must be a str, found {type(note).__name__}")
        out = _draw_text(out, note, top=False)
    return out


def default_series_description(source: Dataset) -> str:
    """"AI Grad-CAM CT" / "AI Grad-CAM MR": what tells the overlay series apart comes first, and short, so
    that it is still readable in a viewer's narrow series list (the demo warning is appended after it)."""
    modality = str(source.get("Modality", "") or "").strip()
    return f"AI Grad-CAM {modality}".strip()


def patient_orientation(image: Dataset) -> tuple[str, str]:
    """Single-letter Patient Orientation of the source's rows and columns (oblique planes rounded)."""
    orientation = image.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        raise ValueError("source_image lacks Image Orientation (Patient), needed for Patient Orientation")
    letters = []
    for cosines in (orientation[:3], orientation[3:]):
        vector = np.asarray(cosines, dtype=np.float64)
        axis = int(np.argmax(np.abs(vector)))
        positive = vector[axis] > 0
        # LPS patient axes: +x towards Left, +y towards Posterior, +z towards Head.
        letters.append(("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis])
    return letters[0], letters[1]


def write_overlay(
    source_image: Dataset,
    rgb: np.ndarray,
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    instance_number: int,
    series_description: str | None = None,
    derivation_description: str | None = None,
    pipeline: str | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``rgb`` (rows, columns, 3; uint8) derived from ``source_image``.

    Demo weights get "NOT FOR CLINICAL USE" burned into the top of the picture (and Burned In Annotation
    YES, so de-identification tools inspect the pixels).
    """
    if not isinstance(source_image, Dataset):
        raise TypeError(f"source_image must be a pydicom Dataset, found {type(source_image).__name__}")
    (source,) = check_source_images([source_image])
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, found {type(algorithm).__name__}")
    series_number = check_int("series_number", series_number)
    instance_number = check_int("instance_number", instance_number)
    rgb = _check_image("rgb", rgb, ndim=3)
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb must be uint8, found dtype {rgb.dtype}")
    if rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb must have shape (rows, columns, 3), found {rgb.shape}")
    if derivation_description is not None and not isinstance(derivation_description, str):
        raise TypeError(f"derivation_description must be a str, found {type(derivation_description).__name__}")

    pixels = _draw_text(rgb, NOT_FOR_CLINICAL_USE, top=True) if algorithm.demo else rgb
    scope = algorithm.uid_scope(str(source.SeriesInstanceUID), pipeline)
    same_grid = rgb.shape[:2] == (int(source.Rows), int(source.Columns))
    spacing = source.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=scope.series(KIND),
        series_number=series_number,
        sop_instance_uid=scope.instance(KIND, instance_number),
        instance_number=instance_number,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if same_grid and spacing else None,
        patient_orientation=patient_orientation(source),
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        contributing_equipment=[algorithm.contributing_equipment()],
        series_description=make_series_description(series_description, default_series_description(source), algorithm),
        **equipment_kwargs(algorithm),
    )
    finish_equipment(sc, source, algorithm)
    if "Laterality" in source:
        sc.Laterality = source.Laterality
    elif "BodyPartExamined" not in sc:
        # Type 2C, required for paired body parts; without Body Part Examined nobody can tell: empty
        # means unknown (dciodvfy: an error when absent, a warning when empty).
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES" if algorithm.demo else "NO"
    # highdicom's SCImage has no source reference; the General Image module's Source Image Sequence does.
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = (derivation_description or f"Overlay by {algorithm.name} {algorithm.version}")[:1024]
    logger.info("SC overlay written: %dx%d, series number %d", rgb.shape[1], rgb.shape[0], series_number)
    return sc
