"""QIDO-RS against the routers on a real server, queried with dicomweb-client (and httpx for raw checks)."""

from __future__ import annotations

from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from requests import HTTPError

from tests.dicomweb.conftest import Corpus, stored_path


def _studies(results: list[dict[str, Any]]) -> list[str]:
    return [r["0020000D"]["Value"][0] for r in results]


def _names(corpus: Corpus, results: list[dict[str, Any]]) -> set[str]:
    by_uid = {uid: name for name, uid in corpus.studies.items()}
    return {by_uid[uid] for uid in _studies(results)}


def _value(result: dict[str, Any], tag: str) -> Any:
    values = result[tag].get("Value")
    return None if values is None else values[0]


def test_all_studies_newest_first_with_the_required_attributes(client: DICOMwebClient, corpus: Corpus,
                                                              base_url: str) -> None:
    results = client.search_for_studies()
    assert len(results) == 6
    assert _studies(results)[:3] == [corpus.studies["john"], corpus.studies["jane"], corpus.studies["anna"]]
    assert _studies(results)[-1] == corpus.studies["ct"]

    jane = next(r for r in results if _value(r, "0020000D") == corpus.studies["jane"])
    assert jane["00080020"] == {"vr": "DA", "Value": ["20200315"]}
    assert jane["00080030"] == {"vr": "TM", "Value": ["101500"]}
    assert jane["00080050"] == {"vr": "SH", "Value": ["ACC-1"]}
    assert jane["00080061"] == {"vr": "CS", "Value": ["MR"]}
    assert jane["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert jane["00080090"] == {"vr": "PN"}  # Type 2, not in the index: empty unless asked for
    assert jane["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert jane["00100020"] == {"vr": "LO", "Value": ["NN-001"]}
    assert jane["00100030"] == {"vr": "DA", "Value": ["19800101"]}
    assert jane["00100040"] == {"vr": "CS", "Value": ["F"]}
    assert jane["00200010"] == {"vr": "SH", "Value": ["S1"]}
    assert jane["00201206"] == {"vr": "IS", "Value": [2]}
    assert jane["00201208"] == {"vr": "IS", "Value": [5]}
    assert jane["00081190"] == {"vr": "UR", "Value": [f"{base_url}/studies/{corpus.studies['jane']}"]}


@pytest.mark.parametrize(("value", "expected"), [
    ("20200101-20201231", {"jane"}),
    ("-2020", {"ct", "mr", "nm", "anna", "jane"}),
    ("2020-", {"jane", "john"}),
    ("2019", {"anna"}),
    ("20191231", {"anna"}),
    ("200401-200408", {"ct", "mr", "nm"}),
    ("20191231-20200315", {"anna", "jane"}),
])
def test_study_date_single_values_and_ranges(client: DICOMwebClient, corpus: Corpus, value: str,
                                             expected: set[str]) -> None:
    assert _names(corpus, client.search_for_studies(search_filters={"StudyDate": value})) == expected


@pytest.mark.parametrize(("value", "fuzzy", "expected"), [
    ("doe*", None, {"jane", "john"}),
    ("D?E^J*", None, {"jane", "john"}),
    ("*anna", None, {"anna"}),
    ("doe^jane", None, {"jane"}),
    ("Doe", None, set()),
    ("Doe", False, set()),
    ("joh", True, {"john"}),
    ("doe", True, {"jane", "john"}),
    ("CompressedSamples^*", None, {"ct", "mr", "nm"}),
])
def test_patient_name_wildcards_case_insensitive(client: DICOMwebClient, corpus: Corpus, value: str,
                                                 fuzzy: bool | None, expected: set[str]) -> None:
    results = client.search_for_studies(search_filters={"PatientName": value}, fuzzymatching=fuzzy)
    assert _names(corpus, results) == expected


@pytest.mark.parametrize(("filters", "expected"), [
    ({"PatientID": "NN-002"}, {"john"}),
    ({"00100020": "NN-003"}, {"anna"}),
    ({"PatientID": "nn-002"}, set()),  # LO is case-sensitive
    ({"PatientID": "NN-00*"}, {"jane", "john", "anna"}),
    ({"AccessionNumber": "ACC-1"}, {"jane"}),
    ({"00080050": "ACC-2"}, {"john"}),
    ({"ModalitiesInStudy": "CT"}, {"ct", "john"}),
    ({"ModalitiesInStudy": "MR\\NM"}, {"mr", "nm", "jane", "anna"}),
    ({"ModalitiesInStudy": "MR,NM"}, {"mr", "nm", "jane", "anna"}),
    ({"Modality": "NM"}, {"nm"}),  # relational: a series of the study matches
    ({"SeriesDescription": "FLAIR*"}, {"jane"}),
    ({"SeriesDescription": "MULTIFRAME", "PatientName": "smith*"}, {"anna"}),
    ({"StudyDescription": "HEAD CT"}, {"john"}),
    ({"StudyDate": "2020-", "PatientName": "*jane"}, {"jane"}),
])
def test_study_matching_keys(client: DICOMwebClient, corpus: Corpus, filters: dict[str, str],
                             expected: set[str]) -> None:
    assert _names(corpus, client.search_for_studies(search_filters=filters)) == expected


def test_uid_list_matching(client: DICOMwebClient, corpus: Corpus) -> None:
    uids = f"{corpus.studies['jane']},{corpus.studies['ct']}"
    assert _names(corpus, client.search_for_studies(search_filters={"StudyInstanceUID": uids})) == {"jane", "ct"}
    results = client.search_for_studies(search_filters={"0020000D": corpus.studies["anna"]})
    assert _names(corpus, results) == {"anna"}


def test_limit_and_offset_page_without_overlap(client: DICOMwebClient) -> None:
    everything = _studies(client.search_for_studies())
    pages = [_studies(client.search_for_studies(limit=2, offset=offset)) for offset in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 2, 0]
    assert pages[0] + pages[1] + pages[2] == everything
    assert _studies(client.search_for_studies(limit=4, offset=4)) == everything[4:]
    # dicomweb-client's get_remaining pages with offset until an empty page
    assert _studies(client.search_for_studies(limit=4, get_remaining=True)) == everything


def test_includefield_reads_attributes_beyond_the_index(client: DICOMwebClient, corpus: Corpus) -> None:
    source = pydicom.dcmread(stored_path(corpus, corpus.instances["jane/1"][0]))
    results = client.search_for_studies(search_filters={"PatientID": "NN-001"},
                                        fields=["ReferringPhysicianName", "00081030", "00080070"])
    assert len(results) == 1
    jane = results[0]
    assert jane["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Ref^Doctor"}]}
    assert jane["00081030"] == {"vr": "LO", "Value": ["BRAIN MRI"]}
    assert _value(jane, "00080070") == source.Manufacturer

    # all: every attribute of the representative instance, bulk data and lower-level UIDs left out
    everything = client.search_for_studies(search_filters={"PatientID": "NN-001"}, fields=["all"])[0]
    assert _value(everything, "00180081") == float(source.EchoTime)
    assert _value(everything, "00080080") == source.InstitutionName
    assert _value(everything, "00280010") == source.Rows
    assert "7FE00010" not in everything
    assert "00080018" not in everything and "0020000E" not in everything
    assert everything["00201208"] == {"vr": "IS", "Value": [5]}


def test_empty_value_is_a_return_key(client: DICOMwebClient, corpus: Corpus) -> None:
    results = client.search_for_studies(search_filters={"PatientID": "NN-001", "ReferringPhysicianName": ""})
    assert results[0]["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Ref^Doctor"}]}


def test_series_of_a_study(client: DICOMwebClient, corpus: Corpus, base_url: str) -> None:
    study = corpus.studies["jane"]
    results = client.search_for_series(study_instance_uid=study)
    assert [_value(r, "0020000E") for r in results] == [corpus.series["jane/1"], corpus.series["jane/2"]]
    first, second = results
    assert first["0008103E"] == {"vr": "LO", "Value": ["T1 AXIAL"]}
    assert first["00200011"] == {"vr": "IS", "Value": [1]}
    assert first["00080060"] == {"vr": "CS", "Value": ["MR"]}
    assert first["00201209"] == {"vr": "IS", "Value": [3]}
    assert second["00201209"] == {"vr": "IS", "Value": [2]}
    assert _value(first, "0020000D") == study
    assert first["00081190"]["Value"] == [f"{base_url}/studies/{study}/series/{corpus.series['jane/1']}"]
    assert "00100010" not in first  # study attributes only when the query spans studies
    assert [_value(r, "0008103E") for r in client.search_for_series(
        study_instance_uid=study, search_filters={"SeriesNumber": "2"})] == ["FLAIR AX"]


def test_series_across_studies_carry_study_attributes(client: DICOMwebClient, corpus: Corpus) -> None:
    results = client.search_for_series(search_filters={"Modality": "CT"})
    assert {_value(r, "0020000E") for r in results} == {corpus.series["ct/1"], corpus.series["john/1"]}
    john = next(r for r in results if _value(r, "0020000E") == corpus.series["john/1"])
    assert john["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert john["00201208"] == {"vr": "IS", "Value": [2]}
    described = client.search_for_series(search_filters={"SeriesDescription": "*AX*"})
    assert {_value(r, "0008103E") for r in described} == {"T1 AXIAL", "FLAIR AX"}
    by_study = client.search_for_series(search_filters={"StudyDate": "2019-2020", "Modality": "MR"})
    assert {_value(r, "0020000E") for r in by_study} == {
        corpus.series[k] for k in ("jane/1", "jane/2", "anna/1", "anna/2")}


def test_instances_at_every_scope(client: DICOMwebClient, corpus: Corpus, base_url: str) -> None:
    study, series = corpus.studies["jane"], corpus.series["jane/1"]
    results = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert [_value(r, "00080018") for r in results] == corpus.instances["jane/1"]
    assert [_value(r, "00200013") for r in results] == [1, 2, 3]
    assert {_value(r, "00080016") for r in results} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert results[0]["00081190"]["Value"] == [
        f"{base_url}/studies/{study}/series/{series}/instances/{corpus.instances['jane/1'][0]}"]
    assert _value(results[0], "0020000E") == series and _value(results[0], "0020000D") == study

    assert len(client.search_for_instances(study_instance_uid=study)) == 5
    assert len(client.search_for_instances(search_filters={"PatientName": "doe*"})) == 7
    assert len(client.search_for_instances()) == 12
    one = client.search_for_instances(search_filters={"SOPInstanceUID": corpus.instances["john/1"][1]})
    assert len(one) == 1 and _value(one[0], "00200013") == 2
    numbered = client.search_for_instances(study_instance_uid=study, search_filters={"InstanceNumber": "2"})
    assert {_value(r, "00080018") for r in numbered} == {corpus.instances["jane/1"][1], corpus.instances["jane/2"][1]}


def test_instance_includefield_rows_columns(client: DICOMwebClient, corpus: Corpus) -> None:
    results = client.search_for_instances(
        study_instance_uid=corpus.studies["anna"], series_instance_uid=corpus.series["anna/2"],
        fields=["Rows", "00280011", "NumberOfFrames", "AvailableTransferSyntaxUID"])
    assert len(results) == 1
    assert results[0]["00280010"] == {"vr": "US", "Value": [64]}
    assert results[0]["00280011"] == {"vr": "US", "Value": [64]}
    assert results[0]["00280008"] == {"vr": "IS", "Value": [3]}
    assert results[0]["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    decoded = Dataset.from_json(results[0])
    assert decoded.Rows == 64 and decoded.SOPInstanceUID == corpus.instances["anna/2"][0]


def test_empty_result_is_200_with_an_empty_array(base_url: str) -> None:
    response = httpx.get(f"{base_url}/studies", params={"PatientID": "nobody"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert response.json() == []


@pytest.mark.parametrize(("path", "params", "status", "fragment"), [
    ("/studies", {"Foo": "bar"}, 400, "unknown attribute 'Foo'"),
    ("/studies", {"ReferringPhysicianName": "Ref*"}, 400, "matching on ReferringPhysicianName is not supported"),
    ("/studies", {"StudyDate": "2020-13-01"}, 400, "StudyDate"),
    ("/studies", {"StudyDate": "yesterday"}, 400, "StudyDate"),
    ("/studies", {"StudyInstanceUID": "1.2.abc"}, 400, "not a valid DICOM UID"),
    ("/studies", {"SeriesNumber": "two"}, 400, "integer"),
    ("/studies", {"limit": "-1"}, 400, "limit"),
    ("/studies", {"fuzzymatching": "maybe"}, 400, "fuzzymatching"),
    ("/studies", {"00400275.00321060": "x"}, 400, "sequence"),
    ("/studies/1.2.3.04/series", {}, 400, "not a valid DICOM UID"),
    ("/studies/1.2.3.4/series", {}, 404, "no such study"),
    ("/studies/1.2.3.4/instances", {}, 404, "no such study"),
])
def test_bad_queries(base_url: str, path: str, params: dict[str, str], status: int, fragment: str) -> None:
    response = httpx.get(base_url + path, params=params)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


def test_series_of_another_study_is_404(base_url: str, corpus: Corpus) -> None:
    response = httpx.get(f"{base_url}/studies/{corpus.studies['jane']}/series/{corpus.series['john/1']}/instances")
    assert response.status_code == 404


def test_dicomweb_client_sees_errors(client: DICOMwebClient) -> None:
    with pytest.raises(HTTPError) as info:
        client.search_for_studies(search_filters={"NotAnAttribute": "1"})
    assert info.value.response.status_code == 400


def test_xml_only_accept_is_406(base_url: str) -> None:
    response = httpx.get(f"{base_url}/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406
