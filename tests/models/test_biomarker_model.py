import numpy as np
import pytest

from neuronova.errors import InvalidRequest
from neuronova.models.biomarkers import FEATURES, MARKERS, OUTPUTS, BiomarkerModel, generate, parse_biomarkers
from neuronova.pipelines.inference import predict_biomarkers

GOOD = {"age": 55, "gender": "M", "tumor_markers": {"CEA": 5.2, "CA19-9": 80.0, "LDH": 240}}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "age": -3}, "biomarkers.age"),
        ({**GOOD, "gender": "X"}, "biomarkers.gender"),
        ({k: v for k, v in GOOD.items() if k != "age"}, "biomarkers.age: Field required"),
        ({**GOOD, "tumor_markers": {"CEA": -1}}, "biomarkers.tumor_markers.CEA"),
        ({**GOOD, "tumor_markers": {"CEA": "high"}}, "biomarkers.tumor_markers.CEA"),
        ({**GOOD, "tumor_markers": {"XYZ": 1.0}}, "biomarkers.tumor_markers.XYZ: Extra inputs"),
        ({**GOOD, "tumor_markers": {}}, "at least one tumour marker"),
        ({**GOOD, "smoker": True}, "biomarkers.smoker"),
        ("not an object", "biomarkers"),
    ],
)
def test_schema_errors_name_the_field(payload, field):
    with pytest.raises(InvalidRequest) as info:
        parse_biomarkers(payload)
    assert field in info.value.message
    assert info.value.http_status == 400 and info.value.code == "INVALID_REQUEST"


def test_aliases_and_missing_markers():
    parsed = parse_biomarkers({"age": 61, "gender": "female", "tumor_markers": {"CA125": 300, "CA 15-3": 40}})
    row = parsed.features()
    assert row.shape == (1, len(FEATURES))
    assert row[0, FEATURES.index("CA-125")] == 300 and row[0, FEATURES.index("CA15-3")] == 40
    assert row[0, 1] == 0.0 and np.isnan(row[0, FEATURES.index("CEA")])


def test_generator_is_deterministic_and_plausible():
    a, ta = generate(3, 500)
    b, tb = generate(3, 500)
    np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    prostate = ta["tumor_type"] == OUTPUTS["tumor_type"].index("Prostate cancer")
    assert (a[prostate, 1] == 1).all()  # men only
    psa = a[:, FEATURES.index("PSA")]
    assert np.nanmedian(psa[prostate]) > 3 * np.nanmedian(psa[~prostate & (a[:, 1] == 1)])
    assert set(MARKERS) <= set(FEATURES)


def test_prediction_with_the_shipped_model(demo_registry):
    model = demo_registry.get("biomarker_prediction", BiomarkerModel)
    result = predict_biomarkers({"age": 72, "gender": "M", "tumor_markers": {"PSA": 80.0, "ALP": 260.0}}, model)
    assert set(result.predictions) == set(OUTPUTS)
    for name, prediction in result.predictions.items():
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
        assert prediction["predicted"] in OUTPUTS[name]
    assert result.predictions["tumor_type"]["predicted"] == "Prostate cancer"
    assert result.predictions["metastasis_site"]["predicted"] == "Bone"
    # the fitted estimators are there for SHAP's TreeExplainer
    assert set(model.estimators) == set(OUTPUTS) and result.feature_names == list(FEATURES)
    assert model.estimators["tumor_type"].n_features_in_ == len(FEATURES)
    assert model.metadata.metrics["heldout_accuracy_tumor_type"] > 2 * model.metadata.metrics["majority_baseline_tumor_type"]
