"""The model card of a model directory: ``<model_dir>/<model_id>/metadata.json``.

It says what the model is (task, labels, version), what it expects (input spec) and returns (output spec),
what it was trained on and how well it did, that demo weights are not for clinical use, and the SHA-256 of
every weight file, checked before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

METADATA_FILE = "metadata.json"
TASKS = ("segmentation", "classification", "tabular_classification")


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: A key of neuronova.models.architectures.ARCHITECTURES; never an import path that gets imported.
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str
    name: str
    version: str
    task: Literal["segmentation", "classification", "tabular_classification"]
    description: str = ""
    labels: dict[str, str] | list[str]
    input: dict[str, Any]
    output: dict[str, Any]
    architecture: Architecture | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    intended_use: str
    not_for_clinical_use: bool = True
    #: file name (relative to the model directory) -> SHA-256 hex digest
    files: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    framework: dict[str, str] = Field(default_factory=dict)

    @property
    def model_hash(self) -> str:
        """One SHA-256 for the whole model: over the file digests, or over the training config when the model is
        rebuilt from it. Results cite it as the algorithm's identity."""
        if self.files:
            text = "\n".join(f"{name}:{digest}" for name, digest in sorted(self.files.items()))
        else:
            text = json.dumps(self.training, sort_keys=True)
        return hashlib.sha256(f"{self.id}:{self.version}\n{text}".encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(model_path: Path) -> ModelMetadata:
    """Parse and validate metadata.json (raises OSError, ValueError)."""
    return ModelMetadata.model_validate_json((model_path / METADATA_FILE).read_text(encoding="utf-8"))


def verify_files(model_path: Path, metadata: ModelMetadata) -> None:
    """Raise ValueError when a listed file is missing, escapes the directory or has another digest."""
    root = model_path.resolve()
    for name, expected in metadata.files.items():
        path = (model_path / name).resolve()
        if root not in path.parents:
            raise ValueError(f"file {name!r} lies outside the model directory")
        if not path.is_file():
            raise ValueError(f"file {name!r} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(f"file {name!r} has SHA-256 {actual[:12]}..., metadata says {expected[:12]}... (corrupt or replaced)")


def write_metadata(model_path: Path, metadata: ModelMetadata) -> None:
    (model_path / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
