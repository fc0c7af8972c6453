"""Biomarker prediction: tumour type, metastasis site and metastasis degree from age, sex and serum markers.

The model is three scikit-learn HistGradientBoostingClassifiers (one per output), which SHAP's TreeExplainer
explains exactly. They are not stored: the model directory holds the training configuration, and loading
regenerates the synthetic data and refits in about a second, then checks the refit against probe predictions
recorded at training time. Why: pickle (and joblib) can run code on load; skl2onnx would give an ONNX graph
but no fitted estimator for TreeExplainer; refitting from a seed needs no new dependency and no code-bearing
file.

Synthetic generative model (all values invented for demonstration, not clinical knowledge):
1. tumour type from a prior; sex from the type (breast, ovarian: female; prostate: male; others 55 % male);
   age ~ Normal(type mean, 11 years), clipped to 18-95.
2. metastasis degree (None, Low, Moderate, High) from a per-type distribution; site "None" when the degree is
   None, else drawn from a per-type site distribution.
3. each marker ~ log-normal around a healthy median (sigma 0.35 in log space), shifted by the type (scaled by
   the tumour burden of the degree), the site (liver: LDH, AFP, ALP, CEA; bone: ALP; brain: S100, NSE;
   peritoneum: CA-125, CA19-9) and the degree (LDH); PSA only in men.
4. each marker is missing with probability 0.08 (NaN; the classifier handles missing values).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from neuronova.errors import InvalidRequest
from neuronova.models.base import LoadedModel
from neuronova.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

GENERATOR = "neuronova.models.biomarkers/v1"
TUMOUR_TYPES = ("Lung adenocarcinoma", "Small cell lung cancer", "Breast cancer", "Colorectal cancer", "Melanoma",
                "Prostate cancer", "Ovarian cancer", "Primary brain tumour")
SITES = ("None", "Brain", "Bone", "Liver", "Lung", "Lymph nodes", "Peritoneum")
DEGREES = ("None", "Low", "Moderate", "High")
OUTPUTS: dict[str, tuple[str, ...]] = {"tumor_type": TUMOUR_TYPES, "metastasis_site": SITES,
                                       "metastasis_degree": DEGREES}
#: marker -> (unit, healthy median)
MARKERS: dict[str, tuple[str, float]] = {
    "CEA": ("ng/mL", 1.5), "AFP": ("ng/mL", 3.0), "CA19-9": ("U/mL", 10.0), "CA-125": ("U/mL", 12.0),
    "CA15-3": ("U/mL", 15.0), "PSA": ("ng/mL", 1.0), "S100": ("ug/L", 0.05), "NSE": ("ng/mL", 10.0),
    "LDH": ("U/L", 180.0), "ALP": ("U/L", 80.0),
}
FEATURES = ("age", "gender_male", *MARKERS)

_TYPE_PRIOR = (0.16, 0.08, 0.16, 0.14, 0.1, 0.12, 0.1, 0.14)
_AGE_MEAN = (66, 64, 58, 67, 60, 70, 62, 55)
# P(degree None, Low, Moderate, High) per type
_DEGREE = ((0.35, 0.25, 0.25, 0.15), (0.1, 0.2, 0.3, 0.4), (0.45, 0.25, 0.2, 0.1), (0.4, 0.25, 0.2, 0.15),
           (0.35, 0.25, 0.2, 0.2), (0.45, 0.25, 0.2, 0.1), (0.3, 0.2, 0.3, 0.2), (0.9, 0.07, 0.03, 0.0))
# P(site Brain, Bone, Liver, Lung, Lymph nodes, Peritoneum | metastatic) per type
_SITE = ((0.3, 0.25, 0.15, 0.1, 0.2, 0.0), (0.35, 0.2, 0.25, 0.05, 0.15, 0.0), (0.15, 0.4, 0.2, 0.15, 0.1, 0.0),
         (0.03, 0.07, 0.6, 0.2, 0.05, 0.05), (0.35, 0.05, 0.2, 0.25, 0.15, 0.0), (0.02, 0.85, 0.03, 0.03, 0.07, 0.0),
         (0.02, 0.03, 0.15, 0.1, 0.1, 0.6), (0.6, 0.1, 0.0, 0.1, 0.2, 0.0))
# log-scale marker shifts per type at full burden
_TYPE_EFFECT: dict[int, dict[str, float]] = {
    0: {"CEA": 1.2, "CA-125": 0.4, "NSE": 0.2}, 1: {"NSE": 1.4, "LDH": 0.5, "CEA": 0.4},
    2: {"CA15-3": 1.2, "CEA": 0.6, "CA-125": 0.3}, 3: {"CEA": 1.6, "CA19-9": 1.1},
    4: {"S100": 1.8, "LDH": 0.6}, 5: {"PSA": 2.5, "ALP": 0.3}, 6: {"CA-125": 2.2, "CA19-9": 0.4},
    7: {"S100": 0.5, "NSE": 0.4},
}
_SITE_EFFECT: dict[int, dict[str, float]] = {
    1: {"S100": 0.6, "NSE": 0.4}, 2: {"ALP": 0.9, "LDH": 0.2}, 3: {"LDH": 0.6, "AFP": 0.5, "ALP": 0.4, "CEA": 0.3},
    4: {"CEA": 0.2, "LDH": 0.2}, 5: {"LDH": 0.2}, 6: {"CA-125": 0.8, "CA19-9": 0.3},
}
_BURDEN = (0.4, 0.7, 1.0, 1.4)
HGB_PARAMS: dict[str, Any] = {"max_iter": 80, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20,
                              "l2_regularization": 1.0, "early_stopping": False}


def generate(seed: int, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic cohort: features (n, len(FEATURES)) with NaN for missing markers, and integer targets."""
    rng = np.random.default_rng(seed)
    tumour = rng.choice(len(TUMOUR_TYPES), size=n, p=_TYPE_PRIOR)
    male = np.where(tumour == 5, 1.0, np.where(np.isin(tumour, (2, 6)), 0.0, (rng.random(n) < 0.55).astype(float)))
    age = np.clip(rng.normal(np.take(_AGE_MEAN, tumour), 11.0), 18, 95).round()
    degree = np.array([rng.choice(4, p=_DEGREE[t]) for t in tumour])
    site = np.array([0 if d == 0 else 1 + rng.choice(6, p=_SITE[t]) for t, d in zip(tumour, degree, strict=True)])
    logs = {name: np.full(n, np.log(median)) for name, (_, median) in MARKERS.items()}
    burden = np.take(_BURDEN, degree)
    for t, effects in _TYPE_EFFECT.items():
        for name, shift in effects.items():
            logs[name] += np.where(tumour == t, shift * burden, 0.0)
    for s, effects in _SITE_EFFECT.items():
        for name, shift in effects.items():
            logs[name] += np.where(site == s, shift, 0.0)
    logs["LDH"] += 0.25 * degree
    logs["PSA"] += np.where(male == 1, 0.01 * (age - 60), np.log(0.02 / 1.0))
    columns = [age, male]
    for name in MARKERS:
        value = np.exp(logs[name] + rng.normal(0, 0.35, n))
        value[rng.random(n) < 0.08] = np.nan
        columns.append(np.round(value, 3))
    return np.column_stack(columns).astype(np.float64), {"tumor_type": tumour, "metastasis_site": site,
                                                         "metastasis_degree": degree}


def data_digest(features: np.ndarray, targets: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes())
    for name in sorted(targets):
        digest.update(np.asarray(targets[name], np.int64).tobytes())
    return digest.hexdigest()


def fit(seed: int, n_samples: int, params: dict[str, Any] | None = None) -> tuple[dict[str, HistGradientBoostingClassifier], str]:
    """Fit one classifier per output on the synthetic cohort; returns them and the training data digest."""
    features, targets = generate(seed, n_samples)
    estimators = {}
    # One OpenMP thread: on a busy 2-core host, OpenMP's spinning threads made one fit take 30 s instead of 1 s.
    with threadpool_limits(1, user_api="openmp"):
        for name in OUTPUTS:
            estimator = HistGradientBoostingClassifier(**(params or HGB_PARAMS), random_state=seed)
            estimators[name] = estimator.fit(features, targets[name])
    return estimators, data_digest(features, targets)


def probe_probabilities(estimators: dict[str, HistGradientBoostingClassifier], seed: int, n: int = 16) -> dict[str, list[list[float]]]:
    probe, _ = generate(seed + 7919, n)
    return {name: np.round(est.predict_proba(probe), 6).tolist() for name, est in estimators.items()}


# ---- request schema -------------------------------------------------------------------------------------


def _marker(name: str, *variants: str) -> Any:
    unit = MARKERS[name][0]
    return Field(None, ge=0, allow_inf_nan=False, description=f"{name} in {unit}",
                 validation_alias=AliasChoices(name, *variants), serialization_alias=name)


class TumorMarkers(BaseModel):
    """Serum tumour markers; any subset, at least one. Names as in the lab report (aliases accepted)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    CEA: float | None = _marker("CEA")
    AFP: float | None = _marker("AFP")
    CA19_9: float | None = _marker("CA19-9", "CA19_9", "CA 19-9", "CA199")
    CA125: float | None = _marker("CA-125", "CA125", "CA_125", "CA 125")
    CA15_3: float | None = _marker("CA15-3", "CA15_3", "CA 15-3", "CA153")
    PSA: float | None = _marker("PSA")
    S100: float | None = _marker("S100", "S100B", "S-100")
    NSE: float | None = _marker("NSE")
    LDH: float | None = _marker("LDH")
    ALP: float | None = _marker("ALP")

    @model_validator(mode="after")
    def _at_least_one(self) -> TumorMarkers:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError(f"at least one tumour marker is needed ({', '.join(MARKERS)})")
        return self

    def values(self) -> dict[str, float | None]:
        """Marker name (canonical spelling) -> value."""
        return self.model_dump(by_alias=True)


class BiomarkerInput(BaseModel):
    """The ``biomarkers`` object of a prediction request."""

    model_config = ConfigDict(extra="forbid")

    age: float = Field(ge=0, le=120, allow_inf_nan=False, description="years")
    gender: str = Field(description="M or F (male/female accepted); O or U when unknown")
    tumor_markers: TumorMarkers

    @field_validator("gender")
    @classmethod
    def _gender(cls, value: str) -> str:
        normalised = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O", "u": "U",
                      "unknown": "U"}.get(str(value).strip().lower())
        if normalised is None:
            raise ValueError(f"must be M, F, O or U, got {value!r}")
        return normalised

    def features(self) -> np.ndarray:
        """One row in FEATURES order (NaN for a missing marker or an unknown sex)."""
        male = {"M": 1.0, "F": 0.0}.get(self.gender, np.nan)
        markers = self.tumor_markers.values()
        return np.array([[self.age, male, *(np.nan if markers[m] is None else markers[m] for m in MARKERS)]])


def parse_biomarkers(payload: Any) -> BiomarkerInput:
    """Validate a request's ``biomarkers`` object; InvalidRequest names each offending field."""
    try:
        return BiomarkerInput.model_validate(payload)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(["biomarkers", *(str(p) for p in err["loc"])])
            problems.append(f"{where}: {err['msg']}")
        raise InvalidRequest("invalid biomarkers: " + "; ".join(problems)) from None


class BiomarkerModel(LoadedModel):
    """Refits the estimators from the recorded configuration and checks them against the recorded probes."""

    task = "tabular_classification"

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str = "auto") -> None:
        super().__init__(path, metadata, device=device)
        training = metadata.training
        if training.get("generator") != GENERATOR:
            raise ValueError(f"unknown training generator {training.get('generator')!r}; this package has {GENERATOR}")
        seed, n = int(training["seed"]), int(training["n_samples"])
        self.estimators, digest = fit(seed, n, dict(training["params"]))
        if digest != training.get("data_sha256"):
            raise ValueError("the regenerated training data differ from the recorded digest (numpy version?)")
        probes = probe_probabilities(self.estimators, seed)
        for name, expected in dict(training["probe_probabilities"]).items():
            if not np.allclose(probes[name], expected, atol=1e-4):
                raise ValueError(f"the refitted {name} estimator differs from the trained one (scikit-learn version?)")
        self.feature_names: list[str] = list(FEATURES)
        self.classes: dict[str, list[str]] = {name: list(labels) for name, labels in OUTPUTS.items()}

    def predict_proba(self, features: np.ndarray) -> dict[str, np.ndarray]:
        # one OpenMP thread: for a few rows, spinning up threads costs more than the trees (25 ms vs 11 ms,
        # and 0.3-0.6 s when the cores are busy)
        with threadpool_limits(1, user_api="openmp"):
            return {name: est.predict_proba(features) for name, est in self.estimators.items()}

    def runtime_status(self) -> dict[str, Any]:
        return {"backend": "scikit-learn", "device": "cpu"}  # gradient-boosted trees: no GPU path

    def warmup(self) -> None:
        self.predict_proba(np.full((1, len(FEATURES)), np.nan))
