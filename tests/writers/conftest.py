"""Fixtures for the writer tests: a small synthetic MR series with tumour labels, algorithms, dciodvfy."""

from __future__ import annotations

import copy
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuronova.phantoms.dicom import make_mr_study
from neuronova.phantoms.head import TUMOUR_LABELS
from neuronova.writers import AlgorithmInfo


def dicom3tools(tool: str, *paths: Path | str) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) that dciodvfy or dcentvfy reports for the files."""
    proc = subprocess.run([tool, *map(str, paths)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if proc.returncode != 0 and not errors:
        errors = [f"{tool} exited {proc.returncode}: {lines[-3:]}"]
    return errors, [line for line in lines if line.startswith("Warning")]


def save(ds: pydicom.Dataset, directory: Path, name: str) -> Path:
    path = directory / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def mr_study():
    """12 axial 64x64 MR slices (inferior to superior) with one tumour: enhancing, necrotic, edema labels."""
    study = make_mr_study(11, shape=(12, 64, 64), n_tumours=1)
    assert set(np.unique(study.labels)) == {0, *TUMOUR_LABELS}
    return study


@pytest.fixture
def source_images(mr_study) -> list[pydicom.Dataset]:
    return copy.deepcopy(mr_study.datasets)


@pytest.fixture
def labels(mr_study) -> np.ndarray:
    return mr_study.labels.copy()


@pytest.fixture
def label_names() -> dict[int, str]:
    return dict(TUMOUR_LABELS)


@pytest.fixture
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="NeuroNova BraTS UNet", version="1.2.0", model_sha256=hashlib.sha256(b"demo weights").hexdigest()
    )


@pytest.fixture
def clinical_algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="NeuroNova BraTS UNet", version="2.0.0", model_sha256=hashlib.sha256(b"validated").hexdigest(),
        demo=False,
    )
