"""The door checks accept what the node writes: a float Parametric Map (no BitsStored/HighBit/PixelRepresentation)."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from neuronova.phantoms.dicom import make_mr_study
from neuronova.store import InstanceStore
from neuronova.writers.common import AlgorithmInfo
from neuronova.writers.pmap import write_parametric_map


def test_a_float_parametric_map_is_stored(tmp_path) -> None:
    sources = make_mr_study(3, shape=(6, 32, 32)).datasets
    values = np.random.default_rng(0).random((len(sources), 32, 32)).astype(np.float32)
    algorithm = AlgorithmInfo(name="test", version="1", model_sha256="0" * 64, demo=True)
    pmap = write_parametric_map(sources, values, algorithm=algorithm, series_number=906, pipeline="mri")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, pmap, enforce_file_format=True)
    store = InstanceStore(tmp_path / "data")
    try:
        store.put(buf.getvalue())
        assert store.path_of(pmap.SOPInstanceUID) is not None
    finally:
        store.close()
