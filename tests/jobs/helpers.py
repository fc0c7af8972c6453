"""Shared helpers of the job tests: a stored series, settings, rules files, waiting."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.dataset import Dataset

from neuronova.config import Settings
from neuronova.store import InstanceStore
from tests.factory import make_series

T = TypeVar("T")
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


def wait_for(check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
