"""The node's one settings object.

Read once at start-up from the command line, the environment (``NEURONOVA_<NAME>``) and an optional TOML
file (``NEURONOVA_CONFIG``), validated, then passed explicitly. Nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from neuronova.errors import ConfigError

ENV_PREFIX = "NEURONOVA_"

#: The forms of the device setting (whether a GPU is usable is checked at start: neuronova.models.runtime).
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


def parse_device(value: str) -> str:
    """Validate a device setting (raises ValueError naming the accepted forms)."""
    text = str(value).strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(f"device must be one of {', '.join(DEVICE_FORMS)}; got {value!r}")
    return text

#: Settings that hold several values: comma separated in the environment, repeatable on the command line.
LIST_SETTINGS = ("allowed_aes", "destinations", "cors_origins")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("data")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    dimse_port: int = Field(11112, ge=0, le=65535)
    ae_title: str = "NEURONOVA"
    #: Calling AE titles allowed to associate; empty means any.
    allowed_aes: tuple[str, ...] = ()
    stable_seconds: float = Field(10.0, ge=0)
    #: A study whose associations (or STOW-RS requests) have all ended is complete this long after the last
    #: one ended, without waiting stable_seconds of quiet (senders that report nothing keep the quiet rule).
    end_grace_seconds: float = Field(0.3, ge=0)
    #: Largest STOW-RS request body; larger requests get 413.
    max_request_bytes: int = Field(4 * 1024**3, gt=0)
    #: Largest upload to the predict API (the guide: 50 MB).
    max_upload_bytes: int = Field(50 * 1024**2, gt=0)
    #: A C-STORE or STOW-RS that repeats a SOP Instance UID with different content: "reject" keeps the
    #: stored instance and answers a failure; "replace" stores the new one.
    duplicate_policy: str = "reject"
    #: An instance whose SeriesInstanceUID is already in another study, or whose PatientID (or
    #: IssuerOfPatientID, where both are present) contradicts its study's stored instances: "reject" answers
    #: a failure (C-STORE 0xC213, STOW-RS FailureReason 0xC213); "accept" stores it.
    identity_policy: Literal["reject", "accept"] = "reject"
    #: Largest decoded pixel size an instance may declare (Rows x Columns x Frames x Samples x Bits Allocated,
    #: also for compressed data: decompression bombs are refused with 0xA700).
    max_decoded_bytes: int = Field(2 * 1024**3, gt=0)

    # Jobs
    queue_url: str | None = None
    #: A worker on another machine reaches the node here (http(s)://host:port): inputs by WADO-RS, results back
    #: by POST; unset: the worker shares the node's data directory.
    node_url: str | None = None
    #: Where the job table lives: unset = SQLite in the data directory with the embedded queue, or the queue's
    #: Redis; a separate redis:// URL (with persistence) survives a flushed queue; "sqlite" forces SQLite.
    job_store_url: str | None = None
    workers: int = Field(1, ge=0)
    routing_rules: Path | None = None
    max_attempts: int = Field(3, ge=1)
    heartbeat_seconds: float = Field(5.0, gt=0)
    webhook_url: str | None = None
    webhook_secret: str | None = None

    # Models
    model_dir: Path | None = None
    device: str = "auto"
    xai_time_budget_seconds: float = Field(30.0, gt=0)
    batch_wait_ms: float = Field(5.0, ge=0)
    max_batch_size: int = Field(8, ge=1)

    # Results
    destinations: tuple[str, ...] = ()
    series_number_base: int = Field(9000, ge=1)

    # API
    jwt_secret: str | None = None
    jwt_audience: str = "neuronova"
    jwt_issuer: str = "neuronova"
    rate_limit_per_minute: int = Field(600, ge=1)
    cors_origins: tuple[str, ...] = ()
    #: Require the bearer token on DICOMweb too (a viewer or PACS then sends one); off for a closed network.
    dicomweb_auth: bool = True
    dimse_host: str = "0.0.0.0"

    # Operations
    #: Serve /metrics without the bearer token (a scraper kept out by a network policy instead).
    metrics_public: bool = False
    #: ``neuronova worker`` only: serve the worker's own /metrics on this port (unset: none).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    #: DICOM TLS (BCP 195): with a certificate the DIMSE port speaks TLS 1.2+ only; with a CA, client
    #: certificates signed by it are required. The same files serve ``dimses://`` destinations.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not 1 <= len(value) <= 16 or "\\" in value or value != value.strip():
            raise ValueError(f"an AE title is 1-16 characters without backslash or padding, got {value!r}")
        return value

    @field_validator("duplicate_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in ("reject", "replace"):
            raise ValueError(f"must be 'reject' or 'replace', got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return parse_device(value)

    @field_validator("jwt_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < 32:
            raise ValueError("a JWT secret must be at least 32 bytes")
        return value

    @field_validator("node_url")
    @classmethod
    def _node_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be the node's http(s):// URL, got {value!r}")
        return value

    @field_validator("queue_url")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis:// URL (leave unset for the embedded SQLite queue), got {value!r}")
        return value

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite3"

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge, lowest first: the TOML file, the environment, then ``overrides`` (the command line).

        Raises ConfigError naming the setting when a value is invalid.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = (overrides or {}).get("config") or environ.get(ENV_PREFIX + "CONFIG")
        if config_file:
            try:
                values.update(tomllib.loads(Path(config_file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"NEURONOVA_CONFIG: cannot read {config_file}: {exc}") from exc
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = tuple(v.strip() for v in raw.split(",") if v.strip()) if name in LIST_SETTINGS else raw
        for name, value in (overrides or {}).items():
            if name == "config" or value is None or (name in LIST_SETTINGS and not value):
                continue
            values[name] = value
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()} (--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}): {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid settings: {problems}") from exc
