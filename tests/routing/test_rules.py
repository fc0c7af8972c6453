"""Routing rules: loading and validation (errors name the rule and key), matching, and the series view read
from the store (orientation from ImageOrientationPatient, ImageType from the first instance)."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

import pytest

from neuronova.errors import ConfigError
from neuronova.pipelines.geometry import plane_of
from neuronova.routing.rules import SeriesInfo, load_rules, parse_rules
from neuronova.routing.series import series_info
from neuronova.store import InstanceStore
from tests.jobs.helpers import encode
from tests.factory import make_series

MR_AXIAL_T1 = SeriesInfo("1.2.3", modality="MR", series_description="AX T1 POST GAD", body_part="HEAD",
                         image_type=("ORIGINAL", "PRIMARY", "M"), orientation="axial", slice_count=150)


def test_default_rules_load_and_route_the_intended_series() -> None:
    rules = load_rules()
    assert rules.pipeline_names == {"mri_segmentation", "mri_tumour_study", "ct_classification"}
    assert rules.route(MR_AXIAL_T1).pipelines == ("mri_segmentation",)
    sagittal = SeriesInfo("1.2.4", modality="MR", series_description="SAG T1 MPRAGE", orientation="sagittal",
                          slice_count=176)
    assert rules.route(sagittal).pipelines == ()  # the single-series model is axial; the study pipeline takes it
    assert rules.route(sagittal).roles == {"mri_tumour_study": "t1"}
    localizer = SeriesInfo("1.2.5", modality="MR", series_description="3-plane localizer T1", orientation="axial",
                           slice_count=30)
    assert rules.route(localizer).pipelines == ()
    ct_head = SeriesInfo("1.2.6", modality="CT", series_description="Routine", body_part="HEAD",
                         image_type=("ORIGINAL", "PRIMARY", "AXIAL"), orientation="axial", slice_count=40)
    both = SeriesInfo("1.2.7", modality="CT", series_description="HEAD 5mm", body_part="HEAD", slice_count=40)
    decision = rules.route(both)
    assert rules.route(ct_head).pipelines == ("ct_classification",)
    assert decision.pipelines == ("ct_classification",)  # two rules matched, one pipeline
    assert decision.matched_rules == ("ct-head-by-body-part", "ct-head-by-description")
    scout = SeriesInfo("1.2.8", modality="CT", body_part="HEAD", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                       slice_count=12)
    assert rules.route(scout).pipelines == ()
    assert rules.route(SeriesInfo("1.2.9", modality="CT", body_part="HEAD", slice_count=3)).pipelines == ()


def test_every_key_matches() -> None:
    rules = parse_rules("""
[[rule]]
name = "all"
pipeline = "p"
modality = ["mr", "CT"]
body_part = "head"
series_description = "^ax"
exclude_series_description = "dwi"
image_type = ["ORIGINAL", "PRIMARY"]
exclude_image_type = "DERIVED"
orientation = ["axial", "oblique"]
min_slices = 20
max_slices = 200

[[rule]]
name = "off"
pipeline = "q"
enabled = false
""")
    assert [r.name for r in rules.rules] == ["all"]
    assert rules.route(MR_AXIAL_T1).pipelines == ("p",)
    cases = {
        "modality": (dict(modality="PT"), "modality PT not in ['MR', 'CT']"),
        "body_part": (dict(body_part="CHEST"), "body part CHEST not in ['HEAD']"),
        "description": (dict(series_description="SAG T1"), "series description does not match"),
        "excluded": (dict(series_description="AX DWI"), "series description is excluded"),
        "image_type": (dict(image_type=("ORIGINAL",)), "image type lacks ['PRIMARY']"),
        "excluded_type": (dict(image_type=("ORIGINAL", "PRIMARY", "DERIVED")), "image type has excluded ['DERIVED']"),
        "orientation": (dict(orientation="coronal"), "orientation coronal not in ['axial', 'oblique']"),
        "unknown orientation": (dict(orientation=None), "orientation (unknown) not in"),
        "few": (dict(slice_count=19), "19 slices, fewer than 20"),
        "many": (dict(slice_count=201), "201 slices, more than 200"),
    }
    for what, (changes, reason) in cases.items():
        decision = rules.route(SeriesInfo(**{**MR_AXIAL_T1.__dict__, **changes}))
        assert decision.pipelines == (), what
        assert reason in decision.reason, (what, decision.reason)


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\npipeline = "p"\n', "rule 1: key 'name' is required"),
    ('[[rule]]\nname = "a"\n', "rule 1 ('a'): key 'pipeline' is required"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nmodalty = "MR"\n', "rule 1 ('a'): unknown key(s) ['modalty']"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nseries_description = "(t1"\n',
     "rule 1 ('a'): key 'series_description': invalid regular expression"),
    ('[[rule]]\nname = "a"\npipeline = "p"\norientation = "transverse"\n',
     "rule 1 ('a'): key 'orientation': ['transverse'] not in"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nmin_slices = -1\n', "key 'min_slices' must be a non-negative integer"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nmin_slices = 10\nmax_slices = 5\n', "'max_slices' is less than"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nmodality = []\n', "key 'modality' must be a non-empty string or list"),
    ('[[rule]]\nname = "a"\npipeline = "p"\nenabled = "yes"\n', "key 'enabled' must be true or false"),
    ('[[rule]]\nname = "a"\npipeline = "p"\n[[rule]]\nname = "a"\npipeline = "q"\n', "name 'a' is used twice"),
    ('rules = 1\n', "unknown top-level key(s) ['rules']"),
    ('[[rule]\n', "not valid TOML"),
])
def test_invalid_rules_are_refused_naming_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, source="test.toml")
    assert message in str(info.value) and "test.toml" in str(info.value)


def test_unknown_pipeline_is_refused_when_the_registry_is_given(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[[rule]]\nname = "a"\npipeline = "nope"\n')
    with pytest.raises(ConfigError, match="key 'pipeline': no pipeline named 'nope'"):
        load_rules(path, known_pipelines=["series_geometry"])
    assert load_rules(path).rules[0].pipeline == "nope"
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")


@pytest.mark.parametrize(("iop", "plane"), [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    ([1, 0, 0, 0, 0.9397, -0.342], "axial"),  # tilted 20 degrees: still axial
    ([1, 0, 0, 0, 0.7071, -0.7071], "oblique"),  # 45 degrees between axial and coronal
])
def test_plane_of(iop: list[float], plane: str) -> None:
    assert plane_of(iop) == plane


def test_plane_of_refuses_degenerate_orientation() -> None:
    with pytest.raises(ValueError, match="parallel"):
        plane_of([1, 0, 0, 1, 0, 0])


def test_series_info_reads_orientation_and_image_type_from_the_store(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    try:
        datasets = make_series(3, series_description="SAG T1")
        for ds in datasets:
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
            ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
            ds.BodyPartExamined = "HEAD"
            store.put(encode(ds))
        [row] = store.index.series_of_study(datasets[0].StudyInstanceUID)
        info = series_info(store, row)
        assert info.scanning_sequence == (str(datasets[0].ScanningSequence).upper(),)  # sequence attributes too
        assert info.echo_time == float(datasets[0].EchoTime) and info.contrast_agent == ""
        info = replace(info, scanning_sequence=(), sequence_variant=(), repetition_time=None, echo_time=None)
        assert info == SeriesInfo(series_uid=datasets[0].SeriesInstanceUID, modality="MR",
                                  series_description="SAG T1", body_part="HEAD",
                                  image_type=("DERIVED", "SECONDARY", "MPR"), orientation="sagittal", slice_count=3)
    finally:
        store.close()
