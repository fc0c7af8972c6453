"""Shared helpers of the job tests: a stored series, settings, rules files, waiting."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from neuronova.config import Settings
from neuronova.store import InstanceStore
from tests.conftest import wait_for  # noqa: F401 - the jobs tests import it from here
from tests.factory import make_series

REPO = Path(__file__).resolve().parents[2]


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def store_series(store: InstanceStore, n: int, **kwargs: Any) -> list[Dataset]:
    datasets = make_series(n, **kwargs)
    for ds in datasets:
        store.put(encode(ds))
    return datasets


def rules_file(tmp_path: Path, *rules: tuple[str, str]) -> Path:
    """A rules file of (modality, pipeline) rules."""
    text = "".join(f'[[rule]]\nname = "r{i}"\npipeline = "{p}"\nmodality = "{m}"\n\n'
                   for i, (m, p) in enumerate(rules))
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": data_dir, "heartbeat_seconds": 0.2, "max_attempts": 3}
    values.update(overrides)
    return Settings(**values)
