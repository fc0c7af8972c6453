import io

import numpy as np
import pytest
from PIL import Image
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from neuronova.errors import XAIGenerationError
from neuronova.xai import explain_tabular, shap_plot_png
from neuronova.xai.shap_explain import PROBABILITY, RAW_LOG_ODDS

FEATURES = ["age", "ki67", "egfr", "idh1", "mgmt", "ldh"]
CLASSES = ["glioma", "meningioma", "metastasis"]


def data(n_classes: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, len(FEATURES)))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5) if n_classes == 3 else (x[:, 0] + x[:, 2] > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def hgb3():
    x, y = data(3)
    return HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y), x


def test_contributions_add_up_to_the_raw_output_of_every_class(hgb3):
    model, x = hgb3
    for row in x[:5]:
        explanation = explain_tabular(model, row[None, :], feature_names=FEATURES, class_names=CLASSES)
        assert explanation.output_space == RAW_LOG_ODDS
        assert explanation.contributions.shape == (3, 6) and explanation.base_values.shape == (3,)
        raw = model.decision_function(row[None, :])[0]
        for k in range(3):
            assert explanation.base_values[k] + explanation.contributions[k].sum() == pytest.approx(raw[k], abs=1e-6)
        assert explanation.additivity_error < 1e-6
        assert explanation.predicted_class == int(model.predict(row[None, :])[0])
        assert explanation.predicted_label == CLASSES[explanation.predicted_class]
        np.testing.assert_allclose(explanation.probabilities, model.predict_proba(row[None, :])[0])


def test_binary_model_explains_both_classes():
    x, y = data(2)
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    explanation = explain_tabular(model, x[0], feature_names=FEATURES, class_names=["M0", "M1"])
    raw = float(model.decision_function(x[:1])[0])
    assert explanation.contributions.shape == (2, 6)
    assert explanation.base_values[1] + explanation.contributions[1].sum() == pytest.approx(raw, abs=1e-6)
    assert explanation.base_values[0] + explanation.contributions[0].sum() == pytest.approx(-raw, abs=1e-6)
    # the features the labels were made from carry the largest effect
    assert set(np.argsort(-np.abs(explanation.contributions[1]))[:2]) == {0, 2}


def test_random_forest_is_explained_in_probability_space():
    x, y = data(3)
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    explanation = explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES)
    assert explanation.output_space == PROBABILITY
    np.testing.assert_allclose(explanation.base_values + explanation.contributions.sum(axis=1), model.predict_proba(x[:1])[0], atol=1e-6)


def test_missing_values_are_explained(hgb3):
    model, x = hgb3
    row = x[:1].copy()
    row[0, 3] = np.nan
    explanation = explain_tabular(model, row, feature_names=FEATURES, class_names=CLASSES)
    assert explanation.additivity_error < 1e-6
    assert explanation.to_dict()["feature_values"]["idh1"] is None


def test_to_dict_is_json_ready(hgb3):
    import json

    model, x = hgb3
    explanation = explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES)
    document = json.loads(json.dumps(explanation.to_dict()))
    assert document["output_space"] == "raw log-odds"
    assert document["predicted_class"] == explanation.predicted_label
    contributions = document["classes"]["glioma"]["contributions"]
    assert list(contributions) == [FEATURES[i] for i in np.argsort(-np.abs(explanation.contributions[0]), kind="stable")]
    assert sum(document["probabilities"].values()) == pytest.approx(1.0)


def test_plot_is_a_png(hgb3):
    model, x = hgb3
    explanation = explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES)
    for class_index, max_features in ((None, 10), (2, 3)):
        image = Image.open(io.BytesIO(shap_plot_png(explanation, class_index, max_features=max_features)))
        image.load()
        assert image.format == "PNG" and image.width >= 400 and image.height >= 150
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # something was drawn
    with pytest.raises(ValueError):
        shap_plot_png(explanation, 3)


def test_bad_inputs(hgb3):
    model, x = hgb3
    with pytest.raises(ValueError):
        explain_tabular(model, x[:2], feature_names=FEATURES, class_names=CLASSES)
    with pytest.raises(ValueError):
        explain_tabular(model, x[:1], feature_names=FEATURES[:3], class_names=CLASSES)
    with pytest.raises(ValueError):
        explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES[:2])
    x3, y3 = data(3)
    gbc = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(x3, y3)
    with pytest.raises(XAIGenerationError):  # shap supports it for two classes only (FACTS)
        explain_tabular(gbc, x3[:1], feature_names=FEATURES, class_names=CLASSES)


def test_a_refitted_estimator_gets_a_fresh_explainer():
    x, y = data(3)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    first = explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES)
    model.set_params(max_iter=25).fit(x, 2 - y)  # same object, other trees
    second = explain_tabular(model, x[:1], feature_names=FEATURES, class_names=CLASSES)
    assert second.additivity_error < 1e-6
    np.testing.assert_allclose(second.base_values + second.contributions.sum(axis=1), model.decision_function(x[:1])[0], atol=1e-6)
    assert not np.allclose(first.contributions, second.contributions)
