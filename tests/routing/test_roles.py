"""Series roles for study pipelines: the shipped rules on realistic headers, and the [[study]] tables."""

from __future__ import annotations

import pytest

from neuronova.errors import ConfigError
from neuronova.routing.rules import SeriesInfo, load_rules, parse_rules

STUDY = "mri_tumour_study"


def mr(description: str, **kw: object) -> SeriesInfo:
    values: dict[str, object] = {"series_uid": "1.2.3", "modality": "MR", "series_description": description,
                                 "image_type": ("ORIGINAL", "PRIMARY", "M", "ND"), "orientation": "axial",
                                 "slice_count": 150}
    values.update(kw)
    return SeriesInfo(**values)  # type: ignore[arg-type]


MPRAGE = {"scanning_sequence": ("GR", "IR"), "sequence_variant": ("SK", "SP", "MP"), "repetition_time": 2300.0,
          "echo_time": 2.98, "inversion_time": 900.0}
FLAIR = {"scanning_sequence": ("SE", "IR"), "repetition_time": 9000.0, "echo_time": 85.0, "inversion_time": 2500.0}
T2 = {"scanning_sequence": ("SE",), "repetition_time": 5000.0, "echo_time": 95.0}


@pytest.mark.parametrize(("info", "role"), [
    (mr("T1 MPRAGE POST GD", contrast_agent="Gadobutrol", **MPRAGE), "t1c"),
    (mr("AX T1 +C", orientation="sagittal"), "t1c"),
    (mr("3D T1", contrast_agent="Gadoterate", orientation="coronal", **MPRAGE), "t1c"),  # the agent decides
    (mr("T1 MPRAGE", orientation="sagittal", **MPRAGE), "t1"),
    (mr("Series 5", **MPRAGE), "t1"),  # no description: TE and TI say T1
    (mr("T2 FLAIR coronal", orientation="coronal", **FLAIR), "flair"),
    (mr("Series 7", **FLAIR), "flair"),  # no description: a long inversion says FLAIR
    (mr("T2 TSE axial oblique", orientation="oblique", **T2), "t2"),
    (mr("Series 9", **T2), "t2"),
])
def test_default_rules_give_roles_by_description_and_sequence(info: SeriesInfo, role: str) -> None:
    decision = load_rules().route(info)
    assert decision.roles.get(STUDY) == role, decision.reason


@pytest.mark.parametrize("info", [
    mr("localizer", **MPRAGE),
    mr("DWI b1000", scanning_sequence=("EP",), echo_time=80.0, repetition_time=6000.0),
    mr("T1 MPRAGE", slice_count=3, **MPRAGE),
    mr("T2 FLAIR", modality="CT"),
])
def test_default_rules_give_no_role_to_other_series(info: SeriesInfo) -> None:
    assert STUDY not in load_rules().route(info).roles


def test_sagittal_t1c_gets_a_role_but_not_the_axial_single_series_model() -> None:
    decision = load_rules().route(mr("T1 MPRAGE POST GD", orientation="sagittal", contrast_agent="Gd", **MPRAGE))
    assert decision.roles == {STUDY: "t1c"} and decision.pipelines == ()
    axial = load_rules().route(mr("T1 MPRAGE POST GD", contrast_agent="Gd", **MPRAGE))
    assert axial.roles == {STUDY: "t1c"} and axial.pipelines == ("mri_segmentation",)


def test_study_table_is_parsed_with_its_policy() -> None:
    spec = load_rules().studies[STUDY]
    assert spec.roles[0] == "t1c" and set(spec.required) == {"t1c", "flair"} and spec.missing == "run"
    assert spec.replaces == ("mri_segmentation",)


BASE = '[[study]]\npipeline = "p"\nroles = ["a", "b"]\n'


@pytest.mark.parametrize(("text", "message"), [
    (BASE + 'missing = "later"\n', "key 'missing' must be one of"),
    (BASE + 'required = ["c"]\n', "key 'required'"),
    (BASE + 'wait_seconds = -1\n', "wait_seconds"),
    (BASE + '[[rule]]\nname = "r"\npipeline = "p"\nrole = "c"\n', "key 'role' must be one of ['a', 'b']"),
    (BASE + '[[rule]]\nname = "r"\npipeline = "p"\n', "key 'role' must be one of"),
    ('[[rule]]\nname = "r"\npipeline = "q"\nrole = "a"\n', "has no [[study]] table"),
    ('[[rule]]\nname = "r"\npipeline = "q"\nmin_echo_time = "long"\n', "min_echo_time"),
    ('[[rule]]\nname = "r"\npipeline = "q"\ncontrast = "yes"\n', "key 'contrast' must be true or false"),
    (BASE + 'colour = 1\n', "unknown key(s) ['colour']"),
])
def test_bad_study_rules_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_rules(text, source="t.toml")
    assert message in str(info.value) and "t.toml" in str(info.value)


def test_time_bounds_need_the_attribute() -> None:
    rules = parse_rules('[[study]]\npipeline = "p"\nroles = ["flair"]\n'
                        '[[rule]]\nname = "r"\npipeline = "p"\nrole = "flair"\nmin_inversion_time = 1500\n')
    assert rules.route(mr("x", inversion_time=2000.0)).roles == {"p": "flair"}
    assert rules.route(mr("x", inversion_time=900.0)).roles == {}
    assert rules.route(mr("x")).roles == {}
    assert "no inversion time" in rules.route(mr("x")).reason
