"""Fixtures for the predict API: the models, apps built by the node's factory, a real uvicorn server, inputs."""

from __future__ import annotations

import gzip
import io
import os
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from neuronova.api.app import create_app
from neuronova.api.auth import mint_token
from neuronova.config import Settings
from neuronova.jobs.worker import JobSystem, build_job_system
from neuronova.models import ModelRegistry
from neuronova.models.metadata import METADATA_FILE
from neuronova.models.registry import DEFAULT_MODEL_DIR, MODEL_IDS
from neuronova.phantoms import make_ct_study, make_mr_study
from neuronova.store import InstanceStore
from tests.conftest import get_port


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NEURONOVA_TEST_MODEL_DIR, else the shipped demo models, else tiny ones trained here (about 20 s)."""
    if os.environ.get("NEURONOVA_TEST_MODEL_DIR"):
        return Path(os.environ["NEURONOVA_TEST_MODEL_DIR"])
    if all((DEFAULT_MODEL_DIR / m / METADATA_FILE).is_file() for m in MODEL_IDS):
        return DEFAULT_MODEL_DIR
    import torch

    from neuronova.models.train_demo import main as train

    threads = torch.get_num_threads()
    try:
        for seed in range(3):
            out = tmp_path_factory.mktemp("models")
            try:
                train(out, seed=seed, quick=True)
                return out
            except RuntimeError as exc:  # a barely trained net may have tied logits that ONNX and torch break apart
                error = exc
        raise error
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry(model_dir: Path) -> ModelRegistry:
    return ModelRegistry.load(model_dir, device="cpu")


@dataclass
class Api:
    app: FastAPI
    settings: Settings
    secret: str

    def token(self, sub: str = "tests") -> str:
        return mint_token(self.secret, sub=sub, audience="neuronova", issuer="neuronova")

    def headers(self, sub: str = "tests") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub)}"}


@pytest.fixture
def make_api(tmp_path: Path, registry: ModelRegistry, model_dir: Path) -> Iterator[Callable[..., Api]]:
    """Apps built as the node builds them: the predict routes, and a job system with one in-process worker
    (SQLite queue and job table in the app's data directory) that runs the segmentation tasks."""
    stores: list[InstanceStore] = []
    systems: list[JobSystem] = []
    count = 0

    def make(models: ModelRegistry | None = None, **overrides: Any) -> Api:
        nonlocal count
        count += 1
        secret = secrets.token_hex(32)
        overrides.setdefault("model_dir", model_dir)
        settings = Settings(data_dir=tmp_path / f"data{count}", jwt_secret=secret, **overrides)
        store = InstanceStore(settings.data_dir)
        stores.append(store)
        system = build_job_system(settings, store=store)
        system.start(workers=1)
        systems.append(system)
        app = create_app(settings=settings, store=store,
                         state={"models": registry if models is None else models, **system.app_state()})
        return Api(app=app, settings=settings, secret=secret)

    yield make
    for system in systems:
        system.stop()
    for store in stores:
        store.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@pytest.fixture
def client(api: Api) -> Iterator[TestClient]:
    with TestClient(api.app) as c:
        c.headers.update(api.headers())
        yield c


@dataclass
class Server:
    url: str
    api: Api


@pytest.fixture
def serve() -> Iterator[Callable[[Api], Server]]:
    """Run an app on a real uvicorn server on a free loopback port (in a thread of this process)."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(api: Api) -> Server:
        port = get_port()
        config = uvicorn.Config(api.app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        running.append((server, thread))
        return Server(url=f"http://127.0.0.1:{port}", api=api)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


# ---- inputs ----------------------------------------------------------------------------------------------


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ct_study() -> Any:
    return make_ct_study(3, n_slices=12, matrix=128, tumour_class="Glioma")


@pytest.fixture(scope="session")
def ct_slice(ct_study: Any) -> pydicom.Dataset:
    """A CT slice through the tumour."""
    k = int(np.argmax(ct_study.labels.sum(axis=(1, 2))))
    return ct_study.datasets[k]


def picture_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def windowed_image() -> np.ndarray:
    """A brain-windowed grayscale picture, not square (so the pad-and-crop of the heatmap is exercised)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:150, :130]
    head = ((yy - 75) / 70) ** 2 + ((xx - 65) / 60) ** 2 < 1
    image = np.where(head, 120 + rng.normal(0, 8, head.shape), 0)
    image[60:80, 40:60] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def mr_study() -> Any:
    return make_mr_study(4, shape=(32, 96, 96), n_tumours=1)


def mr_zip(study: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, ds in enumerate(study.datasets):
            archive.writestr(f"series/IM{i:04d}", dicom_bytes(ds))
        archive.writestr("__MACOSX/._IM0000", b"junk")
    return buffer.getvalue()


def nifti_gz(array_xyz: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array_xyz.astype(np.int16), affine).to_bytes())


def wait_task(get: Callable[[str], Any], status_url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = get(status_url).json()
        if body.get("status") in ("completed", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def copy_models(source: Path, target: Path, ids: tuple[str, ...]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for model_id in ids:
        shutil.copytree(source / model_id, target / model_id)
    return target
