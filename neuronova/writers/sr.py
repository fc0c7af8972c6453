"""TID 1500 Measurement Reports (Comprehensive 3D SR) for segmentation and classification results.

Written to open in OHIF v3 (the viewer tested): OHIF merges the measurement groups that share a Tracking
Unique Identifier into one measurement and needs a 2D SCOORD (with its SELECTED FROM IMAGE reference) in
every merged measurement; a measurement without one stops the whole report from opening (3.13.2: black
viewport, "Cannot read properties of undefined (reading 'ReferencedSOPSequence')"). So:

Segmentation report, per segment with voxels, two groups that share one Tracking UID (one finding, the
segment, measured two ways):

* a TID 1411 Volumetric ROI group: the Volume (mL) referencing the SEG segment and its source images;
* a TID 1501 group: the Area of the segment's outline on its key slice, INFERRED FROM that outline as a 2D
  SCOORD POLYLINE (TID 300/320). A TID 1410 group (outline as its Image Region) would be as valid, but
  OHIF then shows only numbers and a finding site ("363698007: Brain"), never the finding's name.

Each measurement carries a Comment (DCM 121106; the templates are extensible) naming the finding in words
("Enhancing tumour", "Glioma (predicted)"): OHIF shows it as the first line of the measurement's label.
A segment without voxels has no region to show: it is reported as "<label>: 0 mL" text in the Qualitative
Evaluations container instead of a measurement group. No group carries a Finding Site (the SEG's
segments carry the anatomic region).

Classification report: one TID 1501 group per class (finding code, Probability inferred from the driving
slice, whose outline is the SCOORD), one TID 1501 group per important region (its importance as a Score,
inferred from a closed POLYLINE box on that slice), and a Qualitative Evaluations container (TID 1500
row 12) holding the finding ("Indeterminate result" when the classifier was not confident) and, for demo
weights, the "NOT FOR CLINICAL USE" text.

Series descriptions start with what tells the series apart ("AI SR tumour volumes"): viewers cut them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from neuronova.writers import codes as nn_codes
from neuronova.writers.common import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    check_finite,
    check_int,
    check_source_images,
    finish_equipment,
    equipment_kwargs,
    series_description as make_series_description,
)
from neuronova.writers.geometry import SegmentStat, polygon_area
from neuronova.writers.uids import UIDScope

logger = logging.getLogger(__name__)

KIND_SEG_REPORT = "sr-seg"
KIND_CLS_REPORT = "sr-cls"
SEG_REPORT_DESCRIPTION = "AI SR tumour volumes"

__all__ = ["SegmentStat", "write_classification_report", "write_segmentation_report"]


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.name,
        manufacturer_name=MANUFACTURER,
        model_name=f"{algorithm.name} {algorithm.version}"[:64],
        serial_number=algorithm.short_hash,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _notes_container(
    algorithm: AlgorithmInfo, finding: nn_codes.Coded | None, texts: Sequence[str]
) -> hd.sr.ContainerContentItem | None:
    """TID 1500 "Qualitative Evaluations": the coded finding, texts, and the demo warning, as TEXT."""
    items: list[hd.sr.ContentItem] = []
    if finding is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=nn_codes.FINDING, value=finding, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    comments = list(texts)
    if algorithm.demo:
        comments.append(
            f"{NOT_FOR_CLINICAL_USE}: produced by {algorithm.name} {algorithm.version} with demonstration "
            "weights; not validated for diagnosis."
        )
    for comment in comments:
        items.append(
            hd.sr.TextContentItem(
                name=nn_codes.COMMENT, value=comment, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=nn_codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _comment(text: str) -> hd.sr.TextContentItem:
    """A Comment (DCM 121106) in a measurement group (TID 1411 and 1501 are extensible): OHIF shows it as
    the measurement's first label line, so the reader sees which finding the numbers belong to."""
    return hd.sr.TextContentItem(
        name=nn_codes.COMMENT, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _report(
    *,
    algorithm: AlgorithmInfo,
    groups: Sequence[object],
    library_images: Sequence[pydicom.Dataset],
    notes: hd.sr.ContainerContentItem | None,
) -> hd.sr.MeasurementReport:
    placeholder = not groups
    if placeholder and notes is None:
        raise ValueError("a report needs a measurement group or a qualitative evaluation")
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=codes.cid100.ImagingProcedure,
        imaging_measurements=groups or [_placeholder_group()],  # type: ignore[arg-type]
        referenced_images=list(library_images) or None,
    )
    content = report[0].ContentSequence
    if placeholder:
        # Nothing was segmented: no group has a region to show. TID 1500 then needs only the Qualitative
        # Evaluations (its Imaging Measurements container is conditional), but highdicom 0.28 insists on
        # one group, so the container with the placeholder is taken out again.
        content[:] = [item for item in content if item.ConceptNameCodeSequence[0].CodeValue != "126010"]
    if notes is not None:
        # highdicom 0.28 builds TID 1500 rows 1-9 only; row 12 (Qualitative Evaluations) is appended here.
        content.append(notes)
    return report


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="removed before writing")
    )


def _document(
    *,
    report: hd.sr.MeasurementReport,
    evidence: Sequence[pydicom.Dataset],
    scope: UIDScope,
    kind: str,
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str,
    instance_number: int,
) -> hd.sr.Comprehensive3DSR:
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=scope.series(kind),
        series_number=series_number,
        sop_instance_uid=scope.instance(kind, instance_number),
        instance_number=instance_number,
        is_complete=True,
        # An AI result nobody has signed: complete, unverified, preliminary.
        is_final=False,
        series_description=series_description,
        contributing_equipment=[algorithm.contributing_equipment()],
        **equipment_kwargs(algorithm),
    )
    finish_equipment(sr, evidence[0], algorithm)
    return sr


def _check_common(algorithm: object, series_number: object, instance_number: object) -> tuple[int, int]:
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, found {type(algorithm).__name__}")
    return check_int("series_number", series_number), check_int("instance_number", instance_number)


def _check_polyline(name: str, points: object, rows: int, columns: int) -> np.ndarray:
    if not isinstance(points, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of (x, y) points, found {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 3:
        raise ValueError(f"{name} must have shape (n >= 3, 2), found {points.shape}")
    if not np.issubdtype(points.dtype, np.number) or not np.isfinite(points).all():
        raise ValueError(f"{name} must hold finite numbers")
    if points[:, 0].min() < 0 or points[:, 0].max() > columns or points[:, 1].min() < 0 or points[:, 1].max() > rows:
        raise ValueError(
            f"{name} leaves the image ({columns} x {rows}): x in [{points[:, 0].min()}, {points[:, 0].max()}], "
            f"y in [{points[:, 1].min()}, {points[:, 1].max()}]"
        )
    points = points.astype(np.float32)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])  # a closed POLYLINE repeats its first point
    return points


def _segments_of(seg_dataset: object) -> dict[int, pydicom.Dataset]:
    if not isinstance(seg_dataset, pydicom.Dataset):
        raise TypeError(f"seg_dataset must be a pydicom Dataset, found {type(seg_dataset).__name__}")
    if seg_dataset.get("SOPClassUID") != SegmentationStorage:
        raise ValueError(f"seg_dataset must be a Segmentation, found SOP Class {seg_dataset.get('SOPClassUID')}")
    return {int(item.SegmentNumber): item for item in seg_dataset.SegmentSequence}


def _referenced_segment(seg_dataset: pydicom.Dataset, number: int) -> hd.sr.ReferencedSegment:
    """The segment with the source images of its frames; an empty segment (no frame) names the series."""
    has_frames = any(
        int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
        for frame in seg_dataset.get("PerFrameFunctionalGroupsSequence", [])
    )
    if has_frames:
        return hd.sr.ReferencedSegment.from_segmentation(seg_dataset, number)
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg_dataset.SOPClassUID,
        sop_instance_uid=seg_dataset.SOPInstanceUID,
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            seg_dataset.ReferencedSeriesSequence[0].SeriesInstanceUID
        ),
    )


def write_segmentation_report(
    source_images: Sequence[pydicom.Dataset],
    seg_dataset: pydicom.Dataset,
    segment_stats: Sequence[SegmentStat | tuple[int, str, float, int, np.ndarray | None]],
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str | None = None,
    instance_number: int = 1,
    pipeline: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of segment volumes, each referencing its SEG segment, with 2D outlines.

    ``segment_stats`` holds (segment_number, label_name, volume_ml, key_slice_index, contour_xy) per
    segment (``geometry.compute_segment_stats`` makes them); ``contour_xy`` is (n, 2) (x, y) image
    coordinates on ``source_images[key_slice_index]``, or None for no outline (an empty segment).
    ``label_name`` must be the segment's label in the SEG, which catches numbering mix-ups.
    """
    images = check_source_images(source_images)
    series_number, instance_number = _check_common(algorithm, series_number, instance_number)
    segments = _segments_of(seg_dataset)
    if seg_dataset.get("StudyInstanceUID") != images[0].StudyInstanceUID:
        raise ValueError("seg_dataset belongs to another study than source_images")
    if isinstance(segment_stats, (str, bytes)) or not isinstance(segment_stats, Sequence):
        raise TypeError(f"segment_stats must be a sequence of SegmentStat, found {type(segment_stats).__name__}")
    if not segment_stats:
        raise ValueError("segment_stats must describe at least one segment")

    scope = algorithm.uid_scope(str(images[0].SeriesInstanceUID), pipeline)
    rows, columns = int(images[0].Rows), int(images[0].Columns)
    row_mm, col_mm = (float(v) for v in images[0].PixelSpacing)
    algorithm_id = algorithm.sr_algorithm_identification()
    groups: list[object] = []
    key_images: dict[str, pydicom.Dataset] = {}
    empty: list[str] = []
    seen: set[int] = set()
    for i, raw in enumerate(segment_stats):
        if not isinstance(raw, tuple) or len(raw) != 5:
            raise TypeError(f"segment_stats[{i}] must be a SegmentStat (5-tuple), found {raw!r:.80}")
        stat = SegmentStat(*raw)
        number = check_int(f"segment_stats[{i}].segment_number", stat.segment_number, maximum=65535)
        if number not in segments:
            raise ValueError(f"segment_stats[{i}]: segment {number} is not in the SEG (has {sorted(segments)})")
        if number in seen:
            raise ValueError(f"segment_stats[{i}]: segment {number} appears twice")
        seen.add(number)
        segment = segments[number]
        if not isinstance(stat.label_name, str) or stat.label_name.strip() != segment.SegmentLabel:
            raise ValueError(
                f"segment_stats[{i}]: label {stat.label_name!r} does not match SEG segment {number} "
                f"({segment.SegmentLabel!r})"
            )
        volume = check_finite(f"segment_stats[{i}].volume_ml", stat.volume_ml, minimum=0.0)
        key = check_int(f"segment_stats[{i}].key_slice_index", stat.key_slice_index, minimum=0, maximum=len(images) - 1)
        label = stat.label_name.strip()
        if stat.contour_xy is None:
            if volume > 0:
                raise ValueError(
                    f"segment_stats[{i}]: segment {number} has {volume} mL but no outline; a viewer needs the "
                    "key-slice outline to show the measurement"
                )
            empty.append(f"{label}: 0 mL (no voxels segmented)")
            continue
        outline = _check_polyline(f"segment_stats[{i}].contour_xy", stat.contour_xy, rows, columns)
        finding = hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0])
        category = hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyCategoryCodeSequence[0])
        # One finding (the segment) in two groups: the same Tracking UID lets viewers show them as one.
        tracking = hd.sr.TrackingIdentifier(
            uid=scope.tracking(KIND_SEG_REPORT, number), identifier=f"{label} {volume:.1f} mL"[:64]
        )
        volume_group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=_referenced_segment(seg_dataset, number),
            finding_type=finding,
            finding_category=category,
            algorithm_id=algorithm_id,
            measurements=[hd.sr.Measurement(name=nn_codes.VOLUME, value=round(volume, 4), unit=nn_codes.MILLILITER)],
        )
        volume_group[0].ContentSequence.append(_comment(label[:1].upper() + label[1:]))
        groups.append(volume_group)
        key_image = images[key]
        key_images[key_image.SOPInstanceUID] = key_image
        area = round(polygon_area(outline) * row_mm * col_mm, 3)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=finding,
                finding_category=category,
                algorithm_id=algorithm_id,
                measurements=[
                    hd.sr.Measurement(
                        name=nn_codes.AREA,
                        value=area,
                        unit=nn_codes.SQUARE_MILLIMETER,
                        # TID 300 INFERRED FROM TID 320: the area was measured on this outline.
                        referenced_coordinates=[
                            hd.sr.CoordinatesForMeasurement(
                                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                graphic_data=outline,
                                source_image=hd.sr.SourceImageForRegion.from_source_image(key_image),
                            )
                        ],
                    )
                ],
            )
        )
    if not groups:
        logger.info("no segment has voxels: the report holds no measurement group, only its texts")

    report = _report(
        algorithm=algorithm,
        groups=groups,
        library_images=list(key_images.values()),
        notes=_notes_container(algorithm, None, empty),
    )
    sr = _document(
        report=report,
        evidence=[*images, seg_dataset],
        scope=scope,
        kind=KIND_SEG_REPORT,
        algorithm=algorithm,
        series_number=series_number,
        series_description=make_series_description(series_description, SEG_REPORT_DESCRIPTION, algorithm),
        instance_number=instance_number,
    )
    logger.info("segmentation SR written: %d segments, %d measurement groups", len(seen), len(groups))
    return sr


def _check_regions(regions: object, rows: int, columns: int) -> list[tuple[float, float, float, float, float]]:
    if isinstance(regions, (str, bytes)) or not isinstance(regions, Sequence):
        raise TypeError(f"regions must be a sequence of (x, y, w, h, importance), found {type(regions).__name__}")
    checked = []
    for i, region in enumerate(regions):
        if not isinstance(region, (tuple, list)) or len(region) != 5:
            raise TypeError(f"regions[{i}] must be (x, y, w, h, importance), found {region!r:.80}")
        x, y, w, h, importance = (check_finite(f"regions[{i}][{j}]", v) for j, v in enumerate(region))
        if w <= 0 or h <= 0:
            raise ValueError(f"regions[{i}] must have positive width and height, found w={w}, h={h}")
        if x < 0 or y < 0 or x + w > columns or y + h > rows:
            raise ValueError(f"regions[{i}] = {(x, y, w, h)} leaves the image ({columns} x {rows})")
        if importance < 0:
            raise ValueError(f"regions[{i}] importance must be >= 0, found {importance}")
        checked.append((x, y, w, h, importance))
    return checked


def _frame_outline(image: pydicom.Dataset) -> np.ndarray:
    """The closed outline of a whole image: the region an image-level measurement was inferred from."""
    rows, columns = float(image.Rows), float(image.Columns)
    return np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float32)


def write_classification_report(
    source_images: Sequence[pydicom.Dataset],
    *,
    predicted_class: str,
    probabilities: Mapping[str, float],
    driving_slice_index: int,
    regions: Sequence[tuple[float, float, float, float, float]],
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str | None = None,
    instance_number: int = 1,
    pipeline: str | None = None,
    class_codes: Mapping[str, nn_codes.Coded] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of a classification: coded finding, per-class probabilities, driving regions.

    ``probabilities`` maps class names to values in [0, 1] and must contain ``predicted_class``, unless
    the prediction is "indeterminate" (a name ``codes.class_finding`` codes as Indeterminate result: no
    class reached the classifier's confidence threshold); the regions then belong to the most probable
    class. ``regions`` are boxes (x, y, w, h, importance) in image coordinates (pixels, (0, 0) at the top
    left corner) on ``source_images[driving_slice_index]``. Class names are coded by ``codes.class_finding``
    unless ``class_codes`` names them.
    """
    images = check_source_images(source_images)
    series_number, instance_number = _check_common(algorithm, series_number, instance_number)
    if not isinstance(predicted_class, str):
        raise TypeError(f"predicted_class must be a str, found {type(predicted_class).__name__}")
    if not isinstance(probabilities, Mapping):
        raise TypeError(f"probabilities must be a dict[str, float], found {type(probabilities).__name__}")
    if not probabilities:
        raise ValueError("probabilities must not be empty")
    probs = {}
    for name, value in probabilities.items():
        if not isinstance(name, str):
            raise TypeError(f"probabilities keys must be str, found {type(name).__name__}")
        probs[name] = check_finite(f"probabilities[{name!r}]", value, minimum=0.0, maximum=1.0)
    predicted_code = nn_codes.class_finding(predicted_class, class_codes)
    indeterminate = predicted_class not in probs and predicted_code == nn_codes.INDETERMINATE
    if predicted_class not in probs and not indeterminate:
        raise ValueError(f"predicted_class {predicted_class!r} is not in probabilities ({sorted(probs)})")
    # The class the regions explain: the predicted one, or the most probable one of an indeterminate result.
    explained = max(probs, key=probs.__getitem__) if indeterminate else predicted_class
    driving = check_int("driving_slice_index", driving_slice_index, minimum=0, maximum=len(images) - 1)
    rows, columns = int(images[0].Rows), int(images[0].Columns)
    boxes = _check_regions(regions, rows, columns)
    class_code = {name: nn_codes.class_finding(name, class_codes) for name in probs}

    scope = algorithm.uid_scope(str(images[0].SeriesInstanceUID), pipeline)
    algorithm_id = algorithm.sr_algorithm_identification()
    driving_image = images[driving]
    whole_slice = _frame_outline(driving_image)
    groups: list[object] = []

    def inferred_group(kind: str, index: int, label: str, finding: str, measure: Code, value: float,
                       outline: np.ndarray, comment: str) -> None:
        """One TID 1501 group: a value inferred from a region of the driving slice (TID 300 INFERRED FROM
        TID 320: a SCOORD viewers can place; an IMAGE reference they cannot draw), with a comment."""
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=scope.tracking(f"{KIND_CLS_REPORT}-{kind}", index),
                                                         identifier=label[:64]),
            finding_type=class_code[finding],
            algorithm_id=algorithm_id,
            measurements=[hd.sr.Measurement(
                name=measure, value=round(value, 6), unit=nn_codes.NO_UNITS,
                referenced_coordinates=[hd.sr.CoordinatesForMeasurement(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                    source_image=hd.sr.SourceImageForRegion.from_source_image(driving_image))])],
        )
        group[0].ContentSequence.append(_comment(comment))
        groups.append(group)

    for index, (name, probability) in enumerate(probs.items(), start=1):
        predicted = name == predicted_class
        # the probability is a whole-slice measurement: its region is the driving slice
        inferred_group("class", index, f"{'Predicted' if predicted else 'Class'}: {name} {probability:.0%}", name,
                       nn_codes.PROBABILITY, probability, whole_slice, f"{name} (predicted)" if predicted else name)
    for index, (x, y, w, h, importance) in enumerate(boxes, start=1):
        # the importance was inferred from this box of the Grad-CAM map
        box = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float32)
        inferred_group("region", index, f"Grad-CAM region {index} ({explained})", explained, nn_codes.SCORE,
                       importance, box, f"Grad-CAM region {index} ({explained})")

    if indeterminate:
        summary = (
            f"Indeterminate: no class reached the classifier's confidence threshold; most probable class: "
            f"{explained} (probability {probs[explained]:.3f})"
        )
    else:
        summary = f"Predicted class: {predicted_class} (probability {probs[predicted_class]:.3f})"
    report = _report(
        algorithm=algorithm,
        groups=groups,
        library_images=[driving_image],
        notes=_notes_container(algorithm, predicted_code, [summary]),
    )
    modality = str(images[0].get("Modality", "")).strip()
    sr = _document(
        report=report,
        evidence=images,
        scope=scope,
        kind=KIND_CLS_REPORT,
        algorithm=algorithm,
        series_number=series_number,
        series_description=make_series_description(
            series_description, " ".join(filter(None, ["AI SR", modality, "classification"])), algorithm
        ),
        instance_number=instance_number,
    )
    logger.info(
        "classification SR written: %d classes, %d regions%s", len(probs), len(boxes),
        " (indeterminate)" if indeterminate else "",
    )
    return sr
