"""Biomarker prediction for the predict API: three outputs, each explained with SHAP.

Per output (tumour type, metastasis site, metastasis degree) the explanation gives, for every class, the
base value and each feature's contribution in the model's raw output space (log-odds/softmax logits of the
gradient-boosted trees), which add up to the model's output for the row (TreeExplainer is exact; the
explainer checks it), and a waterfall plot of the predicted class as a PNG data URL.
"""

from __future__ import annotations

import time
from typing import Any

from neuronova.errors import XAIGenerationError
from neuronova.models.biomarkers import BiomarkerInput, BiomarkerModel
from neuronova.pipelines.inference import BiomarkerResult, predict_biomarkers
from neuronova.xai import as_data_url, explain_tabular, run_with_budget, shap_plot_png


def predict(model: BiomarkerModel, biomarkers: BiomarkerInput) -> BiomarkerResult:
    return predict_biomarkers(biomarkers, model)


def result_part(result: BiomarkerResult) -> dict[str, Any]:
    return {name: dict(prediction) for name, prediction in result.predictions.items()}


def shap_part(model: BiomarkerModel, result: BiomarkerResult, *, budget_s: float) -> dict[str, Any]:
    """The ``xai.shap`` object; XAIGenerationError when any output cannot be explained within ``budget_s``."""
    deadline = time.monotonic() + budget_s
    part: dict[str, Any] = {}
    for name, estimator in model.estimators.items():
        left = deadline - time.monotonic()
        if left <= 0:
            raise XAIGenerationError(f"SHAP explanation exceeded its time budget of {budget_s:.3g} s")
        explanation = explain_tabular(estimator, result.features, feature_names=result.feature_names,
                                      class_names=model.classes[name], time_budget_s=left)
        k = explanation.predicted_class
        body = explanation.to_dict()
        body["base_value"] = float(explanation.base_values[k])
        body["contributions"] = body["classes"][explanation.predicted_label]["contributions"]
        left = deadline - time.monotonic()
        if left <= 0:
            raise XAIGenerationError(f"SHAP explanation exceeded its time budget of {budget_s:.3g} s")
        png = run_with_budget(lambda e=explanation: shap_plot_png(e), left, what="SHAP plot")
        body["plot_base64"] = as_data_url(png)
        part[name] = body
    return part
