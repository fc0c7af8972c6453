"""The routing view of a stored series: index attributes plus what only the files say.

Modality, description, body part and the instance count come from the index; ImageType and the orientation
are read from the series' first instance (header only), NumberOfFrames too for a multi-frame series.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from neuronova.pipelines.geometry import frames_of, plane_of
from neuronova.routing.rules import SeriesInfo
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

_HEADER_TAGS = ["ImageType", "ImageOrientationPatient", "ImagePositionPatient", "NumberOfFrames",
                "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "PixelSpacing", "SliceThickness",
                "ContrastBolusAgent", "ScanningSequence", "SequenceVariant", "RepetitionTime", "EchoTime",
                "InversionTime"]


def _values(ds: Any, keyword: str) -> tuple[str, ...]:
    raw = ds.get(keyword)
    if not raw:
        return ()
    values = [raw] if isinstance(raw, str) else list(raw)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _ms(ds: Any, keyword: str) -> float | None:
    raw = ds.get(keyword)
    try:
        return float(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def series_info(store: InstanceStore, row: Mapping[str, Any]) -> SeriesInfo:
    """``row``: a row of ``Index.series_of_study`` (with ``instance_count``)."""
    series_uid = str(row["series_uid"])
    count = int(row["instance_count"] or 0)
    image_type: tuple[str, ...] = ()
    orientation: str | None = None
    sequence: dict[str, Any] = {}
    instances = store.index.instances_of_series(series_uid)
    if instances:
        path = store.instances_dir / instances[0]["path"]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError) as exc:
            log.warning("series %s: cannot read the first instance's header (%s)", series_uid, type(exc).__name__)
        else:
            raw_type = ds.get("ImageType")
            if raw_type:
                values = [raw_type] if isinstance(raw_type, str) else list(raw_type)
                image_type = tuple(str(v).strip().upper() for v in values)
            frames = list(frames_of(ds))
            if frames:
                try:
                    orientation = plane_of(frames[0].orientation)
                except ValueError:
                    orientation = None
            if count == 1 and int(ds.get("NumberOfFrames", 1) or 1) > 1:
                count = int(ds.NumberOfFrames)
            sequence = {"contrast_agent": str(ds.get("ContrastBolusAgent", "") or ""),
                        "scanning_sequence": _values(ds, "ScanningSequence"),
                        "sequence_variant": _values(ds, "SequenceVariant"),
                        "repetition_time": _ms(ds, "RepetitionTime"), "echo_time": _ms(ds, "EchoTime"),
                        "inversion_time": _ms(ds, "InversionTime")}
    return SeriesInfo(series_uid=series_uid, modality=str(row["modality"] or ""),
                      series_description=str(row["series_description"] or ""), body_part=str(row["body_part"] or ""),
                      image_type=image_type, orientation=orientation, slice_count=count, **sequence)
