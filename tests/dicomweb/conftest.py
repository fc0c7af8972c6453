"""DICOMweb read-back fixtures: a store holding a few studies and the QIDO/WADO routers on a real uvicorn.

The corpus: pydicom's CT_small, MR_small and JPEG2000 (three studies as shipped), and three studies made
from copies with new UIDs:

- "jane": Doe^Jane, 20200315, MR, series 1 "T1 AXIAL" (3 instances) and series 2 "FLAIR AX" (2);
- "john": DOE^JOHN, 20211201, CT, series 1 "HEAD CT" (2 instances, the second Implicit VR Little Endian);
- "anna": Smith^Anna, 20191231, MR, series 1 "T2 SAG" (1 instance) and series 2 "MULTIFRAME" (one native
  instance of 3 distinct frames).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from dicomweb_client import DICOMwebClient
from fastapi import FastAPI
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from neuronova.api.errors import install_error_handlers
from neuronova.dicomweb.qido import router as qido_router
from neuronova.dicomweb.wado import router as wado_router
from neuronova.store import InstanceStore


@dataclass
class Corpus:
    store: InstanceStore
    #: Encoded Part 10 bytes of every stored instance, by SOP Instance UID.
    files: dict[str, bytes] = field(default_factory=dict)
    #: Study UIDs by name ("ct", "mr", "nm", "jane", "john", "anna"), series UIDs by "study/number".
    studies: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    #: SOP Instance UIDs of each series, by the same key, in instance number order.
    instances: dict[str, list[str]] = field(default_factory=dict)

    def add(self, ds: Dataset, *, study: str, series: str) -> str:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        self.store.put(data)
        self.files[ds.SOPInstanceUID] = data
        self.studies[study] = ds.StudyInstanceUID
        self.series[series] = ds.SeriesInstanceUID
        self.instances.setdefault(series, []).append(ds.SOPInstanceUID)
        return str(ds.SOPInstanceUID)


def _copy(name: str, **attrs: object) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _build(corpus: Corpus) -> None:
    for name, key, in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr"), ("JPEG2000.dcm", "nm")):
        corpus.add(pydicom.dcmread(get_testdata_file(name)), study=key, series=f"{key}/1")

    jane = {"StudyInstanceUID": generate_uid(), "PatientName": "Doe^Jane", "PatientID": "NN-001",
            "StudyDate": "20200315", "StudyTime": "101500", "AccessionNumber": "ACC-1",
            "StudyDescription": "BRAIN MRI", "ReferringPhysicianName": "Ref^Doctor", "StudyID": "S1",
            "PatientBirthDate": "19800101", "PatientSex": "F"}
    for number, description, count in ((1, "T1 AXIAL", 3), (2, "FLAIR AX", 2)):
        series_uid = generate_uid()
        for i in range(1, count + 1):
            ds = _copy("MR_small.dcm", **jane, SeriesInstanceUID=series_uid, SeriesNumber=number,
                       SeriesDescription=description, InstanceNumber=i)
            corpus.add(ds, study="jane", series=f"jane/{number}")

    john = {"StudyInstanceUID": generate_uid(), "PatientName": "DOE^JOHN", "PatientID": "NN-002",
            "StudyDate": "20211201", "StudyTime": "083000", "AccessionNumber": "ACC-2",
            "StudyDescription": "HEAD CT", "SeriesInstanceUID": generate_uid(), "SeriesNumber": 1,
            "SeriesDescription": "HEAD CT"}
    corpus.add(_copy("CT_small.dcm", **john, InstanceNumber=1), study="john", series="john/1")
    implicit = _copy("CT_small.dcm", **john, InstanceNumber=2)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    corpus.add(implicit, study="john", series="john/1")

    anna = {"StudyInstanceUID": generate_uid(), "PatientName": "Smith^Anna", "PatientID": "NN-003",
            "StudyDate": "20191231", "StudyTime": "235959", "AccessionNumber": "ACC-3"}
    corpus.add(_copy("MR_small.dcm", **anna, SeriesInstanceUID=generate_uid(), SeriesNumber=1,
                     SeriesDescription="T2 SAG", InstanceNumber=1), study="anna", series="anna/1")
    multi = _copy("MR_small.dcm", **anna, SeriesInstanceUID=generate_uid(), SeriesNumber=2,
                  SeriesDescription="MULTIFRAME", InstanceNumber=1)
    frame = multi.pixel_array.astype(np.int16)
    multi.NumberOfFrames = 3
    multi.PixelData = np.stack([frame, frame + 100, frame * 2]).astype(frame.dtype).tobytes()
    corpus.add(multi, study="anna", series="anna/2")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    store = InstanceStore(tmp_path_factory.mktemp("dicomweb") / "data")
    built = Corpus(store)
    _build(built)
    yield built
    store.close()


@pytest.fixture(scope="session")
def base_url(corpus: Corpus) -> Iterator[str]:
    """The routers on a real uvicorn, on a socket bound to a free port (no race for the port)."""
    app = FastAPI()
    app.state.store = corpus.store
    install_error_handlers(app)
    app.include_router(qido_router)
    app.include_router(wado_router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/dicomweb"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="session")
def client(base_url: str) -> DICOMwebClient:
    return DICOMwebClient(url=base_url)


def stored_path(corpus: Corpus, sop_uid: str) -> Path:
    path = corpus.store.path_of(sop_uid)
    assert path is not None
    return path


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response, parsed independently of the server."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    body = response.content
    assert body.endswith(f"--{boundary}--\r\n".encode())
    chunks = body[: -len(f"--{boundary}--\r\n")].split(f"--{boundary}\r\n".encode())
    assert chunks[0] == b""
    out = []
    for chunk in chunks[1:]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        assert payload.endswith(b"\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers["Content-Type"], payload[:-2]))
    return out
