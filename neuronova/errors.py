"""One error hierarchy for every front door.

Each error carries the DICOM status a DIMSE handler answers, the HTTP status and the error code the REST
API answers, so the C-STORE listener, STOW-RS and the predict/status APIs report a failure the same way.
"""

from __future__ import annotations


class NeuroNovaError(Exception):
    """Root of the node's errors."""

    #: DIMSE status for C-STORE (0xC000..0xCFFF: "cannot understand"; 0xA7xx: out of resources).
    dicom_status: int = 0xC000
    #: HTTP status and the API's error code (the backend guide's table).
    http_status: int = 500
    code: str = "INTERNAL_SERVER_ERROR"

    #: A short fixed code for metrics labels and logs (never patient data).
    reason: str = "error"

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        if reason is not None:
            self.reason = reason
        #: The instance's SOP Class and Instance UIDs, when they were read before the refusal (STOW-RS
        #: reports them in the failed item).
        self.sop_class_uid: str | None = None
        self.sop_instance_uid: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"success": False, "error": {"code": self.code, "message": self.message}}


class ConfigError(NeuroNovaError):
    """A setting is missing or invalid; the message names the setting."""


class InvalidRequest(NeuroNovaError):
    http_status = 400
    code = "INVALID_REQUEST"


class InvalidDicom(NeuroNovaError):
    """The payload is not a DICOM instance we can store (truncated, not DICOM, missing UIDs)."""

    dicom_status = 0xC210  # Cannot understand: dataset does not match SOP class / unreadable
    http_status = 400
    code = "INVALID_IMAGE_FORMAT"
    reason = "invalid"


class InvalidUID(InvalidDicom):
    """A UID that is not a valid DICOM UID (it would otherwise name a file)."""

    dicom_status = 0xC211
    reason = "uid"


class StudyMismatch(InvalidDicom):
    """STOW-RS to /studies/{uid} with an instance of another study."""

    dicom_status = 0xA900  # PS3.18: "Data Set does not match SOP Class" is the closest failure reason
    http_status = 409
    code = "STUDY_MISMATCH"
    reason = "study_mismatch"


class PixelDataMismatch(InvalidDicom):
    """Native Pixel Data whose length is not what Rows x Columns x Samples x Bits x Frames declare."""

    dicom_status = 0xC212  # Cannot understand: the pixels cannot be read as the header describes them
    reason = "pixel_length"


class DatasetDoesNotMatchSOPClass(InvalidDicom):
    """The header contradicts itself or its SOP class (Rows 0, Bits Stored > Bits Allocated, 3 samples in
    MONOCHROME2, a Segmentation without segments, ...)."""

    dicom_status = 0xA900  # PS3.4 B.2.3: Error: Data Set does not match SOP Class
    reason = "sop_content"


class IdentityConflict(NeuroNovaError):
    """The instance contradicts what is stored: its series belongs to another study, or its patient identity
    (PatientID, IssuerOfPatientID) differs from the study's stored instances (policy: reject)."""

    dicom_status = 0xC213  # Cannot understand family; the ErrorComment says which identity conflicts
    http_status = 409
    code = "IDENTITY_CONFLICT"
    reason = "identity"


class DuplicateConflict(NeuroNovaError):
    """Same SOP Instance UID as a stored instance, different content (policy: reject, keep the stored one)."""

    dicom_status = 0x0111  # PS3.7 C.4.1: Duplicate SOP Instance
    http_status = 409
    code = "DUPLICATE_CONFLICT"
    reason = "duplicate"


class OutOfResources(NeuroNovaError):
    """Disk full or similar; the sender should retry later."""

    dicom_status = 0xA700
    http_status = 507
    code = "OUT_OF_RESOURCES"
    reason = "resources"


class DecodedSizeTooLarge(OutOfResources):
    """The declared decoded pixel size (Rows x Columns x Frames x Samples x Bits) is over the node's limit:
    a decompression bomb, or more than the node will decode."""

    http_status = 413
    code = "IMAGE_TOO_LARGE"
    reason = "decoded_size"


class PayloadTooLarge(NeuroNovaError):
    http_status = 413
    code = "IMAGE_TOO_LARGE"


class UnsupportedMediaType(NeuroNovaError):
    http_status = 415
    code = "INVALID_REQUEST"


class NotFound(NeuroNovaError):
    http_status = 404
    code = "NOT_FOUND"


class Unauthorized(NeuroNovaError):
    http_status = 401
    code = "UNAUTHORIZED"


class RateLimited(NeuroNovaError):
    http_status = 429
    code = "RATE_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotLoaded(NeuroNovaError):
    http_status = 503
    code = "MODEL_NOT_LOADED"


class ModelInferenceError(NeuroNovaError):
    http_status = 500
    code = "MODEL_INFERENCE_ERROR"


class XAIGenerationError(NeuroNovaError):
    http_status = 500
    code = "XAI_GENERATION_ERROR"


class SeriesError(NeuroNovaError):
    """A series cannot be turned into a consistent volume (mixed orientation, gaps, missing pixels)."""

    http_status = 400
    code = "INVALID_SERIES"


class NotAcceptable(NeuroNovaError):
    """A DICOMweb Accept header asks for a representation the node cannot give (e.g. another transfer syntax)."""

    http_status = 406
    code = "NOT_ACCEPTABLE"
