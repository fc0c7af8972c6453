"""An Orthanc configured as shipped for re-runs: ``OverwriteInstances`` from orthanc/orthanc.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, OrthancProcess, get_port

SHIPPED = json.loads((REPO / "orthanc" / "orthanc.json").read_text())


@dataclass
class ShippedOrthanc(OrthancProcess):
    """The test Orthanc with the shipped configuration's settings that decide what a re-run leaves."""

    def config(self) -> dict[str, object]:
        return {**super().config(), "OverwriteInstances": SHIPPED["OverwriteInstances"]}


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[ShippedOrthanc]:
    server = ShippedOrthanc(root=tmp_path / "orthanc", http_port=get_port(), dicom_port=get_port())
    server.start()
    yield server
    server.stop()
