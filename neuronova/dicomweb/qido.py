"""QIDO-RS (PS3.18 10.6): search the node's studies, series and instances; answers application/dicom+json.

Matching (PS3.4 C.2.2.2), on the attributes the index holds (``neuronova.store.index.QIDO_COLUMNS``):

- UIDs: single value or a list separated by commas or backslashes;
- dates and times: a value, a partial value ("2020" is the whole year) or a range ("20200101-20201231",
  "-2020", "2020-");
- person names: wildcards ``*`` and ``?``, case-insensitive (as Orthanc's default); with
  ``fuzzymatching=true`` a name also matches when the value starts any of its components ("joh" finds
  "Doe^John");
- other strings: exact, or wildcards when the value has ``*`` or ``?`` (case-sensitive); CS values may be a
  list; IS values (SeriesNumber, InstanceNumber) compare as integers;
- keys of a lower level (``/studies?Modality=MR``) are relational: one series (instance) must match them all;
  ``ModalitiesInStudy`` and ``SOPClassesInStudy`` match when any series (instance) of the study has the value.

A key that is not a DICOM attribute is refused (400). A DICOM attribute that the index cannot match is refused
too when it has a value (400 naming the matchable ones); with an empty value it is a return key, like
``includefield``. ``includefield`` takes keywords or tags, comma separated or repeated, or ``all``: attributes
the index lacks are read from one stored instance (the instance itself, or the first instance of the series or
study) with pydicom, bulk data left out; ``all`` returns every attribute of that instance except the UIDs of
lower levels. An empty result is ``200 []``. Results are ordered (studies newest first), so ``limit`` and
``offset`` page without overlap; at most ``MAX_RESULTS`` per response, with a Warning header when cut.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, Depends, Request, Response
from pydicom.dataset import Dataset

from neuronova.dicomweb.deps import get_store
from neuronova.dicomweb.dicomjson import (
    DICOM_JSON,
    Attribute,
    dataset_json,
    dicomweb_base,
    new_element,
    resolve_attribute,
)
from neuronova.errors import InvalidRequest, InvalidUID, NotAcceptable, NotFound
from neuronova.store import InstanceStore, validate_uid
from neuronova.store.index import QIDO_COLUMNS, Level, Match

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

#: The most results one response carries; a client pages past it with offset.
MAX_RESULTS = 10_000
RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

_DA = re.compile(r"\d{4}(\d{2}(\d{2})?)?")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
# Above every digit and '.', so "v~" bounds every value that starts with v.
_HIGH = "~"

# Return attributes by level (PS3.18 Table 10.6.3-3..5): keyword -> how the index gives it (row column, a
# computed value, or None: empty unless includefield reads it from a file).
_STUDY = ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
          "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
          "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
          "NumberOfStudyRelatedInstances")
_SERIES = ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")
_INSTANCE = ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber")
_COLUMN_OF = {
    "StudyInstanceUID": "study_uid", "PatientID": "patient_id", "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date", "PatientSex": "patient_sex", "StudyDate": "study_date",
    "StudyTime": "study_time", "AccessionNumber": "accession_number", "StudyDescription": "study_description",
    "StudyID": "study_id", "NumberOfStudyRelatedSeries": "study_series_count",
    "NumberOfStudyRelatedInstances": "study_instance_count", "ModalitiesInStudy": "study_modalities",
    "SeriesInstanceUID": "series_uid", "Modality": "modality", "SeriesDescription": "series_description",
    "SeriesNumber": "series_number", "BodyPartExamined": "body_part", "FrameOfReferenceUID": "frame_of_reference_uid",
    "NumberOfSeriesRelatedInstances": "series_instance_count", "SOPInstanceUID": "sop_uid",
    "SOPClassUID": "sop_class_uid", "InstanceNumber": "instance_number",
    "AvailableTransferSyntaxUID": "transfer_syntax",
}
_LEVEL_OF_INDEX = {
    **{k: "study" for k in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                            "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "StudyID",
                            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy")},
    **{k: "series" for k in ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                             "BodyPartExamined", "FrameOfReferenceUID", "NumberOfSeriesRelatedInstances")},
    **{k: "instance" for k in ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "AvailableTransferSyntaxUID")},
}
_ORDER: dict[str, int] = {"study": 0, "series": 1, "instance": 2}
# With includefield=all, identifiers of levels below the result's would describe one arbitrary instance.
_LOWER_UIDS = {"study": frozenset({0x0020000E, 0x00080018, 0x00020003}),
               "series": frozenset({0x00080018, 0x00020003}), "instance": frozenset()}


@dataclass
class QidoQuery:
    level: Level
    matches: list[Match] = field(default_factory=list)
    #: Attributes to return beyond the level's defaults.
    includes: list[Attribute] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0


def _uid(value: str, name: str) -> str:
    try:
        return validate_uid(value, name=name)
    except InvalidUID as exc:
        raise InvalidRequest(exc.message) from exc


def _int_param(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


def _date_time_match(attr: Attribute, value: str) -> Match:
    pattern = _DA if attr.vr == "DA" else _TM
    low, sep, high = value.partition("-")
    for bound in (low, high):
        if bound and not pattern.fullmatch(bound):
            raise InvalidRequest(f"{attr.keyword}: expected a {attr.vr} value or range "
                                 f"({'YYYYMMDD' if attr.vr == 'DA' else 'HHMMSS'}, partial values and 'A-B' allowed)")
    if sep and not (low or high):
        raise InvalidRequest(f"{attr.keyword}: a range needs at least one bound")
    if not sep:
        high = low
    return Match(attr.keyword, "range", (low, high + _HIGH if high else ""))


def _match(attr: Attribute, value: str, *, fuzzy: bool) -> Match | None:
    """The Match for one key=value; None when the value matches everything (a return key)."""
    value = value.strip()
    if value in ("", "*"):
        return None
    if attr.keyword not in QIDO_COLUMNS:
        matchable = ", ".join(sorted(QIDO_COLUMNS))
        raise InvalidRequest(f"matching on {attr.keyword or attr.hex} is not supported; matchable attributes: "
                             f"{matchable} (an empty value asks only to return an attribute)")
    # ModalitiesInStudy / SOPClassesInStudy are summaries of the series' (instances') values.
    vr = "CS" if attr.keyword == "ModalitiesInStudy" else attr.vr
    if vr in ("DA", "TM"):
        return _date_time_match(attr, value)
    if vr == "UI":
        uids = tuple(_uid(v.strip(), attr.keyword) for v in re.split(r"[,\\]", value))
        return Match(attr.keyword, "list" if len(uids) > 1 else "equal", uids)
    if vr == "IS":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise InvalidRequest(f"{attr.keyword}: expected an integer")
        return Match(attr.keyword, "number", (str(int(value)),))
    if vr == "PN":
        return Match(attr.keyword, "wildcard", (value,), ignore_case=True, fuzzy=fuzzy)
    if "*" in value or "?" in value:
        return Match(attr.keyword, "wildcard", (value,))
    if vr == "CS":
        items = tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
        return Match(attr.keyword, "list" if len(items) > 1 else "equal", items)
    return Match(attr.keyword, "equal", (value,))


def parse_query(params: list[tuple[str, str]], *, level: Level) -> QidoQuery:
    """Turn a QIDO-RS query string into matches, return keys and paging; InvalidRequest says what is wrong."""
    query = QidoQuery(level=level)
    fuzzy = False
    for key, value in params:
        if key == "fuzzymatching":
            if value not in ("true", "false"):
                raise InvalidRequest("fuzzymatching must be true or false")
            fuzzy = value == "true"
    seen: set[str] = set()
    for key, value in params:
        if key in ("limit", "offset"):
            setattr(query, key, _int_param(key, value))
        elif key == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    query.include_all = True
                else:
                    query.includes.append(resolve_attribute(item))
        elif key not in RESERVED:
            attr = resolve_attribute(key)
            name = attr.keyword or attr.hex
            if name in seen:
                raise InvalidRequest(f"{name} is given more than once")
            seen.add(name)
            match = _match(attr, value, fuzzy=fuzzy)
            if match is None:
                query.includes.append(attr)
            else:
                query.matches.append(match)
    if query.limit == 0:  # as Orthanc: no limit (the server's cap still applies)
        query.limit = None
    return query


# --- results -----------------------------------------------------------------------------------------------


def _index_value(keyword: str, row: sqlite3.Row) -> Any:
    if keyword == "InstanceAvailability":
        return "ONLINE"
    value = row[_COLUMN_OF[keyword]]
    if keyword == "ModalitiesInStudy":
        return sorted(filter(None, (value or "").split(",")))
    if keyword in ("SeriesNumber", "InstanceNumber"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


def _retrieve_url(base: str, row: sqlite3.Row, level: Level) -> str:
    url = f"{base}/studies/{row['study_uid']}"
    if level != "study":
        url += f"/series/{row['series_uid']}"
    if level == "instance":
        url += f"/instances/{row['sop_uid']}"
    return url


def _read_file(path: Path, tags: list[int] | None) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True,
                               specific_tags=None if tags is None else [0x00080005, *tags])
    except Exception as exc:  # a file that cannot be read loses its extra attributes, not the response
        log.warning("cannot read %s for QIDO includefield: %s", path.name, type(exc).__name__)
        return None


def _result(store: InstanceStore, query: QidoQuery, row: sqlite3.Row, *, scope: int, base: str) -> dict[str, Any]:
    """One result: the level's defaults (and the levels above up to ``scope``) plus the asked attributes."""
    keywords: list[str] = []
    for level, defaults in (("study", _STUDY), ("series", _SERIES), ("instance", _INSTANCE)):
        if scope <= _ORDER[level] <= _ORDER[query.level]:
            keywords.extend(defaults)
    keywords += ["StudyInstanceUID", "SeriesInstanceUID"][: _ORDER[query.level] + 1]
    available = {k for k, lvl in _LEVEL_OF_INDEX.items() if _ORDER[lvl] <= _ORDER[query.level]}
    if query.include_all:
        keywords.extend(sorted(available))
    from_file: list[Attribute] = []
    for attr in query.includes:
        if attr.keyword in available:
            keywords.append(attr.keyword)
        else:
            from_file.append(attr)
    out: dict[str, Any] = {}
    if from_file or query.include_all:
        out.update(_file_attributes(store, query, row, [a.tag for a in from_file]))
    for keyword in dict.fromkeys(keywords):
        attr = resolve_attribute(keyword)
        if keyword in _COLUMN_OF or keyword == "InstanceAvailability":
            out[attr.hex] = new_element(attr.vr, _index_value(keyword, row))
        elif attr.hex not in out:  # e.g. ReferringPhysicianName: Type 2, empty unless read from a file
            out[attr.hex] = {"vr": attr.vr}
    out["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, row, query.level)]}
    return dict(sorted(out.items()))


def _file_attributes(store: InstanceStore, query: QidoQuery, row: sqlite3.Row, tags: list[int]) -> dict[str, Any]:
    if query.level == "instance":
        path = store.instances_dir / row["path"]
    else:
        first = store.index.first_instance(study_uid=row["study_uid"],
                                           series_uid=row["series_uid"] if query.level == "series" else None)
        if first is None:
            return {}
        path = store.instances_dir / first["path"]
    ds = _read_file(path, None if query.include_all else tags)
    if ds is None:
        return {}
    return dataset_json(ds, skip=_LOWER_UIDS[query.level])


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    ranges = [r.split(";")[0].strip().lower() for r in accept.split(",") if r.strip()]
    if ranges and not any(r in ("*/*", "application/*", "application/json", DICOM_JSON) for r in ranges):
        raise NotAcceptable("QIDO-RS answers application/dicom+json only")


def _search(request: Request, store: InstanceStore, level: Level, *, study: str | None = None,
            series: str | None = None) -> Response:
    _check_accept(request)
    query = parse_query(list(request.query_params.multi_items()), level=level)
    scope = 0
    if study is not None:
        _uid(study, "StudyInstanceUID")
        if store.index.study(study) is None:
            raise NotFound("no such study")
        query.matches.append(Match("StudyInstanceUID", "equal", (study,)))
        scope = 1
    if series is not None:
        _uid(series, "SeriesInstanceUID")
        found = store.index.series_row(series)
        if found is None or found["study_uid"] != study:
            raise NotFound("no such series in this study")
        query.matches.append(Match("SeriesInstanceUID", "equal", (series,)))
        scope = 2
    limit = MAX_RESULTS if query.limit is None else min(query.limit, MAX_RESULTS)
    search = {"study": store.index.qido_studies, "series": store.index.qido_series,
              "instance": store.index.qido_instances}[level]
    # One more than asked tells whether the cap cut the answer.
    rows = search(query.matches, limit=limit + 1, offset=query.offset)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        if query.limit is None or query.limit > MAX_RESULTS:
            headers["Warning"] = (f'299 {request.url.hostname}: "The number of results exceeded the maximum '
                                  f'supported by the server ({MAX_RESULTS}). Additional results can be requested."')
    base = dicomweb_base(request, router.prefix)
    body = [_result(store, query, row, scope=scope, base=base) for row in rows]
    return Response(json.dumps(body, separators=(",", ":")), media_type=DICOM_JSON, headers=headers)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "study")


@router.get("/series", summary="QIDO-RS: search for series")
def search_series(request: Request, store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "series")


@router.get("/instances", summary="QIDO-RS: search for instances")
def search_instances(request: Request, store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "instance")


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
def search_study_series(study: str, request: Request, store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "series", study=study)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(study: str, request: Request, store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "instance", study=study)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for instances of a series")
def search_series_instances(study: str, series: str, request: Request,
                            store: InstanceStore = Depends(get_store)) -> Response:
    return _search(request, store, "instance", study=study, series=series)
