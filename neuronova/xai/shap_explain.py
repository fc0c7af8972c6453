"""SHAP explanations of a tabular (biomarker) model with shap.TreeExplainer.

TreeExplainer is exact for tree ensembles: per class, the base value plus the feature contributions equal
the model's output for that row. For sklearn's HistGradientBoostingClassifier that output is the raw
score of ``decision_function`` (log-odds of the positive class for two classes; for more classes the
per-class softmax logits, log-odds up to a per-row constant); for a random forest it is the probability.
:func:`explain_tabular` checks the sum against the model and records which space it is in.

shap refuses sklearn's GradientBoostingClassifier for more than two classes (FACTS); use
HistGradientBoostingClassifier. Building a TreeExplainer reads every tree (about 40 ms for 100 iterations
x 3 classes, 60x the explanation itself), so one is kept per estimator object (weakly: it goes with the
estimator). A refitted estimator is caught by the additivity check, which rebuilds the explainer once.

The plot is drawn with matplotlib's object API (Figure + Agg canvas), not ``shap.plots``, which draws on
pyplot's global current figure and is unsafe when two requests plot at once.
"""

from __future__ import annotations

import io
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuronova.xai.budget import run_with_budget

log = logging.getLogger(__name__)

RAW_LOG_ODDS = "raw log-odds"
PROBABILITY = "probability"
_ADDITIVITY_TOLERANCE = 1e-6

_explainers: weakref.WeakKeyDictionary[object, object] = weakref.WeakKeyDictionary()
_explainers_guard = threading.Lock()


@dataclass(frozen=True)
class TabularExplanation:
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    feature_values: np.ndarray  #: (F,) the explained row
    base_values: np.ndarray  #: (K,) expected model output per class over the background
    contributions: np.ndarray  #: (K, F) SHAP value of each feature for each class
    model_output: np.ndarray  #: (K,) the model's own output for the row, in ``output_space``
    probabilities: np.ndarray  #: (K,) predict_proba
    predicted_class: int
    output_space: str  #: RAW_LOG_ODDS or PROBABILITY
    additivity_error: float  #: max |base + sum(contributions) - model_output| over classes

    @property
    def predicted_label(self) -> str:
        return self.class_names[self.predicted_class]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: per class, the base value and each feature's contribution, largest effect first."""
        classes = {}
        for k, name in enumerate(self.class_names):
            order = np.argsort(-np.abs(self.contributions[k]), kind="stable")
            classes[name] = {
                "base_value": float(self.base_values[k]),
                "output": float(self.model_output[k]),
                "contributions": {self.feature_names[i]: float(self.contributions[k, i]) for i in order},
            }
        return {
            "predicted_class": self.predicted_label,
            "probabilities": {n: float(p) for n, p in zip(self.class_names, self.probabilities)},
            "output_space": self.output_space,
            "feature_values": {n: _json_number(v) for n, v in zip(self.feature_names, self.feature_values)},
            "classes": classes,
        }


def explain_tabular(
    estimator: object,
    row: np.ndarray,
    *,
    feature_names: Sequence[str],
    class_names: Sequence[str],
    time_budget_s: float | None = None,
) -> TabularExplanation:
    """SHAP values of one row (shape (1, F) or (F,)) for every class of a fitted tree classifier.

    Raises XAIGenerationError when shap cannot explain the model, the values do not add up to the model's
    output, or the budget runs out; ValueError for a row or names that do not fit.
    """
    x = np.asarray(row, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] != 1:
        raise ValueError(f"expected one row of shape (1, F), got {np.shape(row)}")
    if len(feature_names) != x.shape[1]:
        raise ValueError(f"{len(feature_names)} feature names for {x.shape[1]} features")
    n_classes = len(getattr(estimator, "classes_", ()))
    if n_classes < 2:
        raise ValueError(f"expected a fitted classifier with at least two classes, got {type(estimator).__name__}")
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {n_classes} classes")

    def explain() -> TabularExplanation:
        try:
            return _explain(_tree_explainer(estimator), estimator, x, feature_names, class_names)
        except _ExplainerMismatch:
            log.info("cached TreeExplainer no longer matches its %s (refitted?); rebuilding", type(estimator).__name__)
            return _explain(_tree_explainer(estimator, rebuild=True), estimator, x, feature_names, class_names)

    return run_with_budget(explain, time_budget_s, what="SHAP explanation")


class _ExplainerMismatch(ValueError):
    """The explainer's outputs do not reproduce the model's: a stale cached explainer, or a model shap
    cannot explain exactly."""


def _tree_explainer(estimator: object, *, rebuild: bool = False) -> object:
    import shap  # imported on first use: about a second of import time the service may never need

    with _explainers_guard:
        explainer = None if rebuild else _explainers.get(estimator)
    if explainer is None:
        explainer = shap.TreeExplainer(estimator)
        with _explainers_guard:
            _explainers[estimator] = explainer
    return explainer


def _explain(
    explainer: object, estimator: object, x: np.ndarray, feature_names: Sequence[str], class_names: Sequence[str]
) -> TabularExplanation:
    n_classes = len(class_names)
    result = explainer(x)  # type: ignore[operator]
    values = np.asarray(result.values, dtype=np.float64)[0]
    base = np.asarray(result.base_values, dtype=np.float64).reshape(-1)
    if values.ndim == 1 and n_classes == 2:
        # A binary model explains the positive class's log-odds; the negative class's are their negation.
        values, base = np.stack([-values, values], axis=1), np.array([-base[0], base[0]])
    contributions = values.T if values.ndim == 2 else values[None, :]  # (K, F)
    if contributions.shape[0] != n_classes:
        raise _ExplainerMismatch(f"{contributions.shape[0]} SHAP outputs for a model with {n_classes} classes")
    probabilities = np.asarray(estimator.predict_proba(x), dtype=np.float64)[0]  # type: ignore[attr-defined]
    space, output, error = _match_output_space(estimator, x, base + contributions.sum(axis=1), probabilities)
    return TabularExplanation(
        feature_names=tuple(feature_names),
        class_names=tuple(class_names),
        feature_values=x[0].copy(),
        base_values=base,
        contributions=contributions,
        model_output=output,
        probabilities=probabilities,
        predicted_class=int(np.argmax(probabilities)),
        output_space=space,
        additivity_error=error,
    )


def _match_output_space(
    estimator: object, x: np.ndarray, reconstructed: np.ndarray, probabilities: np.ndarray
) -> tuple[str, np.ndarray, float]:
    """Which of the model's outputs the SHAP sums reproduce, and how closely."""
    candidates: list[tuple[str, np.ndarray]] = []
    if hasattr(estimator, "decision_function"):
        raw = np.asarray(estimator.decision_function(x), dtype=np.float64).reshape(-1)
        candidates.append((RAW_LOG_ODDS, np.array([-raw[0], raw[0]]) if raw.size == 1 else raw))
    candidates.append((PROBABILITY, probabilities))
    errors = []
    for space, output in candidates:
        error = float(np.max(np.abs(reconstructed - output)))
        if error <= _ADDITIVITY_TOLERANCE * max(1.0, float(np.max(np.abs(output)))):
            return space, output, error
        errors.append(f"{space}: {error:.3g}")
    raise _ExplainerMismatch(f"SHAP values do not add up to the model's output ({', '.join(errors)})")


def shap_plot_png(
    explanation: TabularExplanation, class_index: int | None = None, *, max_features: int = 10, dpi: int = 100
) -> bytes:
    """A waterfall plot of one class's contributions (default: the predicted class) as PNG bytes.

    Bars start at the base value and add the features, largest effect on top, up to the model's output;
    features beyond ``max_features - 1`` are summed into one bar.
    """
    k = explanation.predicted_class if class_index is None else class_index
    if not 0 <= k < len(explanation.class_names):
        raise ValueError(f"class index {k} is out of range for {len(explanation.class_names)} classes")
    if max_features < 2:
        raise ValueError(f"max_features must be at least 2, got {max_features}")
    contributions = explanation.contributions[k]
    order = np.argsort(-np.abs(contributions), kind="stable")
    shown = order if len(order) <= max_features else order[: max_features - 1]
    labels = [f"{explanation.feature_names[i]} = {_format(explanation.feature_values[i])}" for i in shown]
    amounts = [float(contributions[i]) for i in shown]
    if len(shown) < len(order):
        rest = order[len(shown) :]
        labels.append(f"{len(rest)} other features")
        amounts.append(float(contributions[rest].sum()))

    figure = Figure(figsize=(7.5, 0.45 * len(amounts) + 1.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    base = float(explanation.base_values[k])
    position = base
    # Drawn bottom-up: the smallest effect starts at the base value, the largest ends at the output.
    for row, amount in enumerate(reversed(amounts)):
        colour = "#ff0051" if amount >= 0 else "#008bfb"  # shap's red (raises) and blue (lowers)
        axes.barh(row, amount, left=position, color=colour, height=0.6)
        axes.annotate(f"{amount:+.3f}", (position + amount, row), xytext=(3 if amount >= 0 else -3, 0),
                      textcoords="offset points", va="center", ha="left" if amount >= 0 else "right", fontsize=8)
        position += amount
    axes.set_yticks(range(len(labels)), list(reversed(labels)), fontsize=9)
    axes.axvline(base, color="grey", linestyle=":", linewidth=1)
    axes.axvline(position, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel(f"model output ({explanation.output_space}): E[f(x)] = {base:.3f}, f(x) = {position:.3f}")
    axes.set_title(f"Contributions to class {explanation.class_names[k]!r}", fontsize=11)
    cumulative = np.concatenate([[base], base + np.cumsum(list(reversed(amounts)))])
    low, high = float(cumulative.min()), float(cumulative.max())
    pad = 0.2 * (high - low) if high > low else 0.5
    axes.set_xlim(low - pad, high + pad)  # room for the value labels on both sides
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _format(value: float) -> str:
    return "missing" if np.isnan(value) else f"{value:.4g}"


def _json_number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
