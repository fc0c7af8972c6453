"""Request and response models of the predict API (the backend guide's section 2.4), for validation and OpenAPI.

The explanation parts are typed loosely (``dict``): their content is documented on the functions that make
them (classification.grad_cam_part, biomarkers.shap_part, segmentation.run_segmentation).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuronova.errors import InvalidRequest
from neuronova.models.biomarkers import BiomarkerInput

REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_PATIENT_ID = 64
XAI_METHODS = {"ct_classification": ("grad_cam",), "mri_segmentation": ("grad_cam",),
               "biomarker_prediction": ("shap",)}


def request_id_or_new(value: str | None) -> str:
    if value is None or value == "":
        return f"REQ_{uuid.uuid4().hex}"
    if not REQUEST_ID.fullmatch(value):
        raise InvalidRequest("request_id: 1-128 characters, letters, digits and . _ : - (starting with a letter or digit)")
    return value


def check_patient_id(value: str | None) -> str | None:
    # Kept out of every log and response: the guide asks for an anonymised id, but nothing checks that it is.
    if value is None:
        return None
    if len(value) > MAX_PATIENT_ID or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"patient_id: at most {MAX_PATIENT_ID} printable characters")
    return value


def check_methods(model_id: str, methods: list[str] | None) -> None:
    available = XAI_METHODS[model_id]
    unknown = [m for m in methods or () if m not in available]
    if unknown:
        raise InvalidRequest(f"xai_methods: {', '.join(map(repr, unknown))} not available for {model_id} "
                             f"(available: {', '.join(available)})")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined, for an OpenAPI request body declared by hand
    (a ``#/$defs/...`` reference would point into the OpenAPI document, not the schema)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)  # type: ignore[no-any-return]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: ErrorDetail


class ClassificationResult(BaseModel):
    predicted_class: str = Field(description="the most probable class")
    confidence: float = Field(description="its calibrated probability")
    probabilities: dict[str, float]
    outcome: str = Field("", description="predicted_class, or 'Indeterminate' below indeterminate_below")
    indeterminate: bool = False
    indeterminate_below: float = Field(0.0, description="the model's calibrated confidence threshold")


class CTClassificationResponse(BaseModel):
    success: Literal[True] = True
    request_id: str
    model_id: str
    model_version: str
    inference_time_ms: float = Field(description="decoding and preprocessing of the upload plus the forward pass")
    batch_size: int = Field(description="requests that shared this request's forward pass")
    result: ClassificationResult
    xai: dict[str, Any] | None = Field(
        None, description="{'grad_cam': {heatmap_base64, overlay_base64, important_regions, ...}} or, when the "
                          "explanation failed, {'error': {'code': 'XAI_GENERATION_ERROR', 'message': ...}}; "
                          "null when not asked for")
    not_for_clinical_use: bool


class TaskCreated(BaseModel):
    success: Literal[True] = True
    task_id: str
    request_id: str
    status: str
    estimated_time_seconds: float
    status_url: str


class TaskStatus(BaseModel):
    success: Literal[True] = True
    task_id: str
    status: Literal["pending", "running", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: str
    updated_at: str
    request_id: str | None = None
    result: dict[str, Any] | None = Field(
        None, description="when completed: volumes_ml per label, mask_url (NIfTI), seg_url (DICOM SEG, DICOM "
                          "input only), key slices, xai")
    error: ErrorDetail | None = Field(None, description="when failed")


class BiomarkerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str | None = Field(None, max_length=MAX_PATIENT_ID, description="anonymised; never logged")
    request_id: str | None = Field(None, max_length=128)
    biomarkers: BiomarkerInput
    xai: bool = False
    xai_methods: list[str] | None = None
    xai_required: bool = Field(False, description="fail the whole request (500 XAI_GENERATION_ERROR) when "
                                                  "the explanation fails, instead of answering without it")

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str | None) -> str | None:
        if value is not None and not REQUEST_ID.fullmatch(value):
            raise ValueError("1-128 characters, letters, digits and . _ : - (starting with a letter or digit)")
        return value


class BiomarkerPrediction(BaseModel):
    predicted: str
    confidence: float
    probabilities: dict[str, float]


class BiomarkerResponse(BaseModel):
    success: Literal[True] = True
    request_id: str
    model_id: str
    model_version: str
    inference_time_ms: float
    result: dict[str, BiomarkerPrediction] = Field(
        description="tumor_type, metastasis_site, metastasis_degree")
    xai: dict[str, Any] | None = Field(
        None, description="{'shap': {output: {base_value, contributions, classes: {class: {base_value, output, "
                          "contributions}}, output_space, plot_base64, ...}}} or {'error': {...}}")
    not_for_clinical_use: bool


#: The error responses every predict route may answer (OpenAPI).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ((400, "INVALID_REQUEST or INVALID_IMAGE_FORMAT"), (401, "UNAUTHORIZED"),
                         (404, "NOT_FOUND (tasks)"), (413, "IMAGE_TOO_LARGE"),
                         (429, "RATE_LIMIT_EXCEEDED, with Retry-After"),
                         (500, "MODEL_INFERENCE_ERROR, XAI_GENERATION_ERROR or INTERNAL_SERVER_ERROR"),
                         (503, "MODEL_NOT_LOADED"))
}
