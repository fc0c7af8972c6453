"""Ingest benchmark: the node beside Orthanc and dcmtk's storescp, on loopback, with the same files.

Usage: ``python bench/ingest.py [--quick] [--no-readme] [--sets mr,ct,small] [--only node,orthanc,storescp]``

For each study set (a 155-slice 256x256 MR series, a 200-slice 512x512 CT series, 2000 small instances) and
each way in (C-STORE by dcmtk's storescu over 1 and 4 parallel associations; STOW-RS with raw multipart over
1 and 4 parallel clients), a fresh server receives the files; the table gives instances/s, MB/s and the
server's peak RSS (VmHWM), and the node/Orthanc ratio. Orthanc runs with ``SyncStorageArea`` (it fsyncs, as
the node does); storescp does not fsync and is a reference for the wire alone.

Not a test: the numbers depend on the machine and on what else runs on it. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, CTImageStorage, generate_uid

REPO = Path(__file__).resolve().parent.parent
README = REPO / "bench" / "README.md"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # Debian's dcmtk leaves Nagle on otherwise (40 ms per instance)
STOW_BATCH = 50


# --- study sets -----------------------------------------------------------------------------------------------

def _series(n: int, *, rows: int, modality: str, study_uid: str, series_number: int, rng: np.random.Generator,
            patient: str) -> list[Dataset]:
    series_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    base = rng.integers(0, 1000, size=(rows, rows), dtype=np.uint16)
    out = []
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Bench^{patient}", patient, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "BENCH1", "1"
        ds.StudyDescription, ds.SeriesDescription = "Ingest benchmark", f"{modality} bench {series_number}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, i + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 1.0
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (base + np.uint16(i)).tobytes()  # simple, distinct per slice
        out.append(ds)
    return out


def make_sets(directory: Path, *, quick: bool, names: Sequence[str]) -> dict[str, list[Path]]:
    """Write the study sets as Part 10 files; returns {set name: files}."""
    rng = np.random.default_rng(0)
    n_mr, n_ct, n_small = (40, 20, 200) if quick else (155, 200, 2000)
    spec: dict[str, Callable[[], list[Dataset]]] = {
        "mr": lambda: _series(n_mr, rows=256, modality="MR", study_uid=generate_uid(), series_number=1, rng=rng,
                              patient="MR1"),
        "ct": lambda: _series(n_ct, rows=512, modality="CT", study_uid=generate_uid(), series_number=1, rng=rng,
                              patient="CT1"),
        # many small instances: 2 studies of 10 series each (the per-instance cost dominates)
        "small": lambda: [ds for st in range(2) for study in [generate_uid()] for se in range(10)
                          for ds in _series(n_small // 20, rows=64, modality="MR", study_uid=study,
                                            series_number=se + 1, rng=rng, patient=f"SM{st}")],
    }
    sets = {}
    for name in names:
        d = directory / name
        d.mkdir(parents=True)
        paths = []
        for ds in spec[name]():
            path = d / f"{ds.SOPInstanceUID}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        sets[name] = paths
    return sets


def make_warmup(directory: Path) -> list[Path]:
    """Two small instances (one per way in) sent to every server before it is timed."""
    directory.mkdir(parents=True)
    paths = []
    for ds in _series(2, rows=64, modality="MR", study_uid=generate_uid(), series_number=99,
                      rng=np.random.default_rng(1), patient="WARMUP"):
        paths.append(directory / f"{ds.SOPInstanceUID}.dcm")
        pydicom.dcmwrite(paths[-1], ds, enforce_file_format=True)
    return paths


# --- servers --------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 120, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}\n{tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen on {port} in time")


def _tree_pids(pid: int) -> list[int]:
    """The process and its descendants (several listener processes count together)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The peak (VmHWM) or current (VmRSS) resident set of a process and its descendants, in MB."""
    total = 0
    for p in _tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Server:
    name = ""
    aet = ""
    stow_url: str | None = None
    proc: subprocess.Popen

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dimse_port = free_port()

    def start(self) -> None:
        raise NotImplementedError

    def start_checked(self) -> None:
        """Start; if it does not come up, stop what was started before raising."""
        try:
            self.start()
        except BaseException:
            if getattr(self, "proc", None) is not None:
                self.stop()
            raise

    def count(self) -> int:
        raise NotImplementedError

    def warm_up(self, files: Sequence[Path]) -> None:
        """Serve one instance each way first: what a process does once (imports, an HTTP framework building its
        routes on the first request: about 0.35 s for the node) is not ingest throughput."""
        send_cstore(self, files[:1], 1)
        if self.stow_url is not None:
            send_stow(self, files[1:2], 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # the numbers are taken; no need to wait for a clean stop
            self.proc.wait(30)


class NodeServer(Server):
    name, aet = "node", "NEURONOVA"

    def start(self) -> None:
        self.http_port = free_port()
        self.data = self.workdir / "data"
        env = {**os.environ, "NEURONOVA_JWT_SECRET": secrets.token_hex(32), "NEURONOVA_DICOMWEB_AUTH": "false"}
        cmd = [sys.executable, "-m", "neuronova.cli", "serve", "--data-dir", str(self.data),
               "--http-port", str(self.http_port), "--dimse-port", str(self.dimse_port),
               "--dimse-host", "127.0.0.1", "--log-level", "WARNING"]
        with open(self.workdir / "node.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # The listener starts before the HTTP server: no probe of the DIMSE port (it would hold an association).
        _wait_port(self.http_port, self.proc, log=self.workdir / "node.log")
        self.stow_url = f"http://127.0.0.1:{self.http_port}/dicomweb/studies"

    def count(self) -> int:
        db = sqlite3.connect(f"file:{self.data / 'index.sqlite3'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        finally:
            db.close()


class OrthancServer(Server):
    name, aet = "Orthanc", "ORTHANC"

    def start(self) -> None:
        self.http_port = free_port()
        config = {
            "Name": "bench", "DicomAet": self.aet, "DicomPort": self.dimse_port, "HttpPort": self.http_port,
            "StorageDirectory": str(self.workdir / "storage"), "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
            "StorageCompression": False, "SyncStorageArea": True,
            "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        with open(self.workdir / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen([ORTHANC, str(path)], cwd=self.workdir, env=DCMTK_ENV, stdout=log,
                                         stderr=subprocess.STDOUT)
        _wait_port(self.http_port, self.proc, log=self.workdir / "orthanc.log")
        _wait_port(self.dimse_port, self.proc)
        self.stow_url = f"http://127.0.0.1:{self.http_port}/dicom-web/studies"

    def count(self) -> int:
        stats = httpx.get(f"http://127.0.0.1:{self.http_port}/statistics", timeout=30).json()
        return int(stats["CountInstances"])


class StorescpServer(Server):
    name, aet = "storescp", "STORESCP"

    def start(self) -> None:
        self.out = self.workdir / "out"
        self.out.mkdir()
        self.proc = subprocess.Popen(["storescp", "-aet", self.aet, "-od", str(self.out), str(self.dimse_port)],
                                     env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.dimse_port, self.proc)

    def count(self) -> int:
        return sum(1 for _ in self.out.iterdir())


SERVERS: dict[str, type[Server]] = {"node": NodeServer, "orthanc": OrthancServer, "storescp": StorescpServer}


# --- senders --------------------------------------------------------------------------------------------------

def _split(files: Sequence[Path], n: int) -> list[list[Path]]:
    return [list(files[i::n]) for i in range(n)]


def send_cstore(server: Server, files: Sequence[Path], parallel: int) -> None:
    procs = [subprocess.Popen(["storescu", "-R", "-aet", "BENCHSCU", "-aec", server.aet, "127.0.0.1",
                               str(server.dimse_port), *map(str, part)],
                              env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for part in _split(files, parallel)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {err.decode(errors='replace')[-500:]}")


def _multipart(files: Sequence[Path], boundary: str) -> bytes:
    parts = []
    for f in files:
        parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), f.read_bytes(), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def send_stow(server: Server, files: Sequence[Path], parallel: int) -> None:
    assert server.stow_url is not None
    errors: list[str] = []

    def client(part: list[Path]) -> None:
        with httpx.Client(timeout=600) as http:
            for i in range(0, len(part), STOW_BATCH):
                boundary = uuid.uuid4().hex
                body = _multipart(part[i:i + STOW_BATCH], boundary)
                r = http.post(server.stow_url, content=body, headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json"})
                failed = r.json().get("00081198", {}).get("Value", []) if r.status_code in (200, 202, 409) else []
                if r.status_code != 200 or failed:
                    errors.append(f"HTTP {r.status_code}, {len(failed)} failed parts: {r.text[:300]}")
                    return

    threads = [threading.Thread(target=client, args=(part,)) for part in _split(files, parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])


# --- runs -----------------------------------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    dataset: str
    way: str
    n: int
    seconds: float
    mbytes: float
    rss_mb: float
    #: resident set when the measurement began (the server started and warmed up)
    rss_start_mb: float

    @property
    def per_s(self) -> float:
        return self.n / self.seconds

    @property
    def mb_s(self) -> float:
        return self.mbytes / self.seconds


WAYS: dict[str, tuple[Callable[[Server, Sequence[Path], int], None], int]] = {
    "C-STORE x1": (send_cstore, 1), "C-STORE x4": (send_cstore, 4),
    "STOW-RS x1": (send_stow, 1), "STOW-RS x4": (send_stow, 4),
}


def run_one(server_cls: type[Server], dataset: str, files: Sequence[Path], way: str, workroot: Path,
            warmup: Sequence[Path], running: Server | None = None) -> Result:
    """Send ``files`` to a fresh, warmed-up server (or to ``running``, which must not hold them yet) and check it
    holds them."""
    send, parallel = WAYS[way]
    server = running
    if server is None:
        server = server_cls(Path(tempfile.mkdtemp(prefix=f"{server_cls.name}-", dir=workroot)))
        server.start_checked()
    try:
        if running is None:
            server.warm_up(warmup)
        before = server.count()
        rss_start = peak_rss_mb(server.proc.pid, "VmRSS")
        t0 = time.perf_counter()
        send(server, files, parallel)
        seconds = time.perf_counter() - t0
        rss = peak_rss_mb(server.proc.pid)
        got = server.count() - before
        for _ in range(20):  # an index may lag its acknowledgements a little (not the node's: it indexes first)
            if got == len(files) or server_cls is NodeServer:
                break
            time.sleep(0.25)
            got = server.count() - before
        if got != len(files):
            raise RuntimeError(f"{server.name} holds {got} new instances after {way} of {len(files)} acknowledged")
    finally:
        if running is None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    mbytes = sum(f.stat().st_size for f in files) / 1e6
    return Result(server_cls.name, dataset, way, len(files), seconds, mbytes, rss, rss_start)


def table(results: list[Result], sets: dict[str, tuple[int, float]]) -> str:
    lines = ["| set | way | node inst/s | Orthanc inst/s | storescp inst/s | node / Orthanc | node MB/s | "
             "Orthanc MB/s | node peak RSS MB (at start) | Orthanc peak RSS MB (at start) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by = {(r.server, r.dataset, r.way): r for r in results}
    for dataset, (n, mb) in sets.items():
        for way in WAYS:
            node, orth, scp = (by.get((s, dataset, way)) for s in ("node", "Orthanc", "storescp"))
            if not (node or orth or scp):
                continue

            def f(r: Result | None, attr: str, fmt: str = "{:.0f}") -> str:
                return fmt.format(getattr(r, attr)) if r else "–"

            def rss(r: Result | None) -> str:
                return f"{r.rss_mb:.0f} ({r.rss_start_mb:.0f})" if r else "–"

            ratio = f"{node.per_s / orth.per_s:.2f}" if node and orth else "–"
            lines.append(f"| {dataset} ({n} x {mb / n * 1000:.0f} kB) | {way} | "
                         f"{f(node, 'per_s')} | {f(orth, 'per_s')} | {f(scp, 'per_s')} | {ratio} | "
                         f"{f(node, 'mb_s', '{:.1f}')} | {f(orth, 'mb_s', '{:.1f}')} | "
                         f"{rss(node)} | {rss(orth)} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, loopback; Orthanc 1.10 with SyncStorageArea, dcmtk 3.6.7 "
            "(TCP_NODELAY=1)")


def write_readme(section: str) -> None:
    """Replace the "## Ingest" section of bench/README.md, keeping every other section."""
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Ingest"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), *([""] if end < len(lines) else []),
                         *lines[end:]]) + "\n"
    README.write_text(new)


SECTION_HEAD = """## Ingest

`.venv/bin/python bench/ingest.py [--repeat N] [--quick]` generates the study sets (a 155-slice 256x256 MR
series, a 200-slice 512x512 CT series, 2000 small 64x64 instances in 20 series), starts each server fresh
for each measurement on loopback, warms it up with one instance each way, sends the same files and checks
that every acknowledged instance is held. C-STORE: dcmtk `storescu -R` with `TCP_NODELAY=1`, one process per
association, each with its share of the files. STOW-RS: raw multipart/related bodies of {batch} instances
built by hand (httpx), one thread per client. Orthanc 1.10 with the DICOMweb plugin, `SyncStorageArea: true`
and no compression (it fdatasyncs each file); the node with its defaults (the file and its directory
fsync'd, then the SQLite index row, before success). storescp (dcmtk, one process, no fsync) is the wire's
reference. Peak RSS is the server's VmHWM; in brackets its RSS when the measurement began. Clients and
servers share the same two cores, and other jobs share the disk: compare within a row (interleaved runs).
`--quick` (about 40 s) reuses one server of each kind and small sets: a smoke run, not a measurement.

What the node does per instance: pynetdicom negotiates the association, then the listener serves the data
phase itself (`scp_listener/dataphase.py`: one thread reads the PDUs, the dataset goes to the store, then
the C-STORE-RSP); pynetdicom's own data phase (two threads handing each PDU over, each polling every 1 ms)
was the ceiling before (155-slice MR, one association, data on tmpfs: 273/s; a handler that did nothing:
about 1000 small instances/s). The store keeps the instance in memory up to 4 MB, writes it in one call,
checks it from memory, renames it into place, fsyncs the file and the directory (together when flushes are
slow; directory fsyncs of concurrent instances are shared), writes the index row, and only then answers.

What limits it here: the disk's flushes. Every fsync on this VM is a flush to the host; when other jobs
write, one takes milliseconds. The node asks for two per instance (the file and its directory: the
durability rule), Orthanc for one (an fdatasync of the file; its SQLite index is not synced). Running the
two together and sharing directory flushes between associations recovers most of the difference, not all:
with one association on a busy disk Orthanc can stay ahead (in an earlier run the day of the table below,
with a busier disk and before directory fsyncs were shared: MR C-STORE x1 222 vs 396/s, 2000 small
C-STORE x4 794 vs 955). With small instances the two are about even. On ext4 the
fsync of a new file already writes its directory entry, so the directory fsync is redundant there, but it is
kept: the rule does not depend on the file system. CPU is not the limit: with the data on tmpfs the node
spends about 0.24 ms of CPU per small instance by C-STORE and 0.21 by STOW-RS, Orthanc about 0.53-0.6.
The node's resident set is mostly its model runtime (PyTorch, ONNX Runtime), loaded before it listens.
"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer instances: a smoke run")
    ap.add_argument("--no-readme", action="store_true", help="do not write bench/README.md")
    ap.add_argument("--sets", default="mr,ct,small")
    ap.add_argument("--only", default="node,orthanc,storescp", help="servers to run")
    ap.add_argument("--ways", default=",".join(WAYS), help="comma separated, of: " + ", ".join(WAYS))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the median is reported")
    ap.add_argument("--workdir", type=Path, help="where files and servers' data go (default: a temp dir)")
    args = ap.parse_args(argv)
    names = [s for s in args.sets.split(",") if s]
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    servers = [SERVERS[s] for s in args.only.split(",") if s]

    root = Path(tempfile.mkdtemp(prefix="nn-bench-", dir=args.workdir))
    results: list[Result] = []
    sizes: dict[str, tuple[int, float]] = {}
    failures: list[str] = []
    # The full run starts a fresh server for each measurement. The quick run starts each server once (the
    # node takes seconds to start) and sends each measurement a fresh copy of the set (new UIDs).
    running: dict[type[Server], Server] = {}
    try:
        t0 = time.perf_counter()
        sets = make_sets(root / "sets", quick=args.quick, names=names)
        print(f"study sets written in {time.perf_counter() - t0:.1f} s", flush=True)
        warmup = make_warmup(root / "warmup")
        if args.quick:
            for cls in servers:
                server = cls(Path(tempfile.mkdtemp(prefix=f"{cls.name}-", dir=root)))
                server.start_checked()
                running[cls] = server
                server.warm_up(warmup)
        for dataset, files in sets.items():
            sizes[dataset] = (len(files), sum(f.stat().st_size for f in files) / 1e6)
            for way in ways:
                runs: dict[str, list[Result]] = {}
                for i in range(args.repeat):  # interleaved, so that a busy moment hits every server alike
                    for cls in servers:
                        if cls is StorescpServer and way.startswith("STOW"):
                            continue
                        if running:
                            copy = root / f"copy-{cls.name}-{dataset}-{way.replace(' ', '')}-{i}"
                            files = make_sets(copy, quick=True, names=[dataset])[dataset]
                        try:
                            r = run_one(cls, dataset, files, way, root, warmup, running.get(cls))
                        except RuntimeError as exc:  # reported with the table, the other runs go on
                            failures.append(f"{cls.name} {dataset} {way}: {str(exc).splitlines()[0]}")
                            print("FAILED:", failures[-1], flush=True)
                            continue
                        runs.setdefault(r.server, []).append(r)
                        print(f"{r.server:9s} {dataset:6s} {way:11s} {r.per_s:7.0f} inst/s {r.mb_s:7.1f} MB/s "
                              f"peak RSS {r.rss_mb:6.0f} MB", flush=True)
                results += [sorted(rs, key=lambda r: r.seconds)[len(rs) // 2] for rs in runs.values()]
    finally:
        for server in running.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = table(results, sizes)
    if failures:
        out += "\n\nFailed runs (not in the table):\n" + "\n".join(f"- {f}" for f in failures)
    print()
    print(out)
    if not args.no_readme:
        kind = ("quick smoke run" if args.quick else "full run") + (
            f", median of {args.repeat} interleaved runs" if args.repeat > 1 else "")
        write_readme(SECTION_HEAD.format(batch=STOW_BATCH)
                     + f"\n{dt.date.today().isoformat()}, {kind}; {machine()}.\n\n{out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
