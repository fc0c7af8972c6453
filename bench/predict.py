"""Throughput and latency of POST /predict/ct_classification on a real uvicorn server over loopback.

    .venv/bin/python bench/predict.py [--duration 5] [--rounds 2] [--matrix 512] [--model-dir DIR]
        [--clients 1,8] [--batch-wait-ms 5] [--max-batch-size 8] [--torch-threads 0] [--json out.json]

Two server processes (the node's app factory with the demo models or --model-dir; without shipped demo
models, tiny ones of the same architectures are trained first): batching off (max_batch_size 1) and on.
For Grad-CAM off and on and each client count, N closed-loop clients (threads, each with its own keep-alive
connection) post the same CT DICOM slice (a phantom, --matrix square, about 0.5 MB at 512) for --duration
seconds after a warm-up, to the batching-off server then the batching-on one, for --rounds rounds (pooled),
so that load from other work on the machine falls on both alike. Before that, in-process medians of the
steps of one request (decode, ONNX forward and Grad-CAM per item at batch 1 and 8, pictures). Reports requests/s
and p50/p95 latency per case, then the Grad-CAM overhead (latency at 1 client, throughput at the most
clients) and the batching gain (throughput at the most clients, on / off).

The clients share the machine with the server: on a small machine they take CPU from it, which this
bench reports as it is rather than hides (the client process's CPU time is printed).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script's folder, first on sys.path, holds other benches (queue.py would shadow the standard
# library's queue): put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(args: argparse.Namespace) -> None:
    """The server process: the node's app with the predict routes and the models, on uvicorn."""
    import logging

    import uvicorn

    from neuronova.api.app import create_app
    from neuronova.config import Settings
    from neuronova.models import ModelRegistry
    from neuronova.store import InstanceStore

    logging.basicConfig(level=logging.WARNING)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    settings = Settings(data_dir=Path(args.data_dir), jwt_secret=os.environ["BENCH_SECRET"],
                        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                        rate_limit_per_minute=10**7, model_dir=args.model_dir)
    registry = ModelRegistry.load(args.model_dir, device=settings.device)
    app = create_app(settings=settings, store=InstanceStore(settings.data_dir), state={"models": registry})
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


@dataclass
class Case:
    batching: bool
    xai: bool
    clients: int
    latencies: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000

    def row(self) -> dict[str, object]:
        return {"batching": self.batching, "grad_cam": self.xai, "clients": self.clients, "requests": len(self.latencies),
                "errors": self.errors, "rps": round(self.rps, 1), "p50_ms": round(self.percentile(50), 1),
                "p95_ms": round(self.percentile(95), 1),
                "mean_batch": round(statistics.fmean(self.batch_sizes), 2) if self.batch_sizes else 0.0}


def run_case(url: str, token: str, image: bytes, case: Case, duration: float, warmup: float) -> None:
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()
    data = {"xai": "true" if case.xai else "false"}

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            while not stop.is_set():
                started = time.perf_counter()
                response = http.post("/predict/ct_classification", files={"image": ("slice.dcm", image)}, data=data)
                elapsed = time.perf_counter() - started
                if not measuring.is_set():
                    continue
                with lock:
                    if response.status_code != 200:
                        case.errors += 1
                        continue
                    body = response.json()
                    if case.xai and "grad_cam" not in (body.get("xai") or {}):
                        case.errors += 1
                        continue
                    case.latencies.append(elapsed)
                    case.batch_sizes.append(body["batch_size"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(case.clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    measuring.set()
    started = time.perf_counter()
    time.sleep(duration)
    stop.set()
    case.seconds += time.perf_counter() - started
    for t in threads:
        t.join(120)


def start_server(args: argparse.Namespace, *, batching: bool, secret: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--data-dir", str(data_dir),
           "--model-dir", str(args.model_dir), "--batch-wait-ms", str(args.batch_wait_ms),
           "--max-batch-size", str(args.max_batch_size if batching else 1), "--torch-threads", str(args.torch_threads)]
    proc = subprocess.Popen(cmd, env={**os.environ, "BENCH_SECRET": secret})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def ct_slice_bytes(matrix: int) -> bytes:
    import numpy as np
    import pydicom

    from neuronova.phantoms import make_ct_study

    study = make_ct_study(11, n_slices=12, matrix=matrix, tumour_class="Meningioma")
    k = int(np.argmax(study.labels.sum(axis=(1, 2))))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, study.datasets[k], enforce_file_format=True)
    return buffer.getvalue()


def micro(model_dir: Path, image: bytes, torch_threads: int) -> dict[str, float]:
    """In-process medians (ms) of the steps a request takes: decode, ONNX forward and Grad-CAM per item at
    batch 1 and 8, and drawing the response's pictures. The servers are not running yet."""
    import torch

    from neuronova.models import ModelRegistry
    from neuronova.models.classification import ClassificationModel
    from neuronova.predict import classification as ct

    if torch_threads:
        torch.set_num_threads(torch_threads)
    model = ModelRegistry.load(model_dir, device="cpu", model_ids=("ct_classification",)).get(
        "ct_classification", ClassificationModel)
    decoded = ct.decode_ct_upload(image, model)

    def median_ms(fn, repeats: int = 30) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return round(statistics.median(times) * 1000, 2)

    def work(n: int, explain: bool) -> list[ct.Work]:
        return [ct.Work(decoded.network_input, explain, time.monotonic() + 60) for _ in range(n)]

    outcome = ct.forward_batch(model, work(1, True))[0]
    result = {"decode (DICOM to network input)": median_ms(lambda: ct.decode_ct_upload(image, model))}
    for n in (1, 8):
        plain = median_ms(lambda n=n: ct.forward_batch(model, work(n, False)))
        explained = median_ms(lambda n=n: ct.forward_batch(model, work(n, True)))
        result[f"ONNX forward, per item at batch {n}"] = round(plain / n, 2)
        result[f"ONNX forward + Grad-CAM, per item at batch {n}"] = round(explained / n, 2)
    result["Grad-CAM pictures and regions at the image size"] = median_ms(
        lambda: ct.grad_cam_part(decoded, outcome, model))
    return result


def model_dir_or_train(given: str | None, scratch: Path) -> Path:
    from neuronova.models.metadata import METADATA_FILE
    from neuronova.models.registry import DEFAULT_MODEL_DIR, MODEL_IDS

    if given:
        return Path(given)
    if all((DEFAULT_MODEL_DIR / m / METADATA_FILE).is_file() for m in MODEL_IDS):
        return DEFAULT_MODEL_DIR
    from neuronova.models.train_demo import main as train

    print("no shipped demo models: training tiny ones (same architectures, quick=True)", file=sys.stderr)
    train(scratch / "models", quick=True)
    return scratch / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per case and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all cases (results pooled)")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of requests before measuring")
    parser.add_argument("--matrix", type=int, default=512, help="CT slice rows and columns")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads in the server (0: torch's default, one per core)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        args.model_dir = str(model_dir_or_train(args.model_dir, scratch))
        image = ct_slice_bytes(args.matrix)
        secret = secrets.token_hex(32)
        from neuronova.api.auth import mint_token

        token = mint_token(secret, sub="bench", audience="neuronova", issuer="neuronova", ttl_seconds=86400)
        model_level = micro(Path(args.model_dir), image, args.torch_threads)
        cases = {(b, x, n): Case(batching=b, xai=x, clients=n)
                 for b in (False, True) for x in (False, True) for n in clients}
        cpu_start = time.process_time()
        servers = {b: start_server(args, batching=b, secret=secret, data_dir=scratch / f"data-{b}")
                   for b in (False, True)}
        try:
            # Round-robin, batching off and on back to back: load from elsewhere falls on both alike.
            for _ in range(args.rounds):
                for xai in (False, True):
                    for n in clients:
                        for batching in (False, True):
                            case = cases[(batching, xai, n)]
                            run_case(servers[batching][1], token, image, case, args.duration, args.warmup)
                            print(json.dumps(case.row()), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
        client_cpu = time.process_time() - cpu_start

    def find(batching: bool, xai: bool, n: int) -> Case:
        return cases[(batching, xai, n)]

    most = max(clients)
    print()
    print("| batching | Grad-CAM | clients | req/s | p50 ms | p95 ms | mean batch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for c in cases.values():
        r = c.row()
        print(f"| {'on' if c.batching else 'off'} | {'on' if c.xai else 'off'} | {c.clients} | {r['rps']} | "
              f"{r['p50_ms']} | {r['p95_ms']} | {r['mean_batch']} |")
    summary: dict[str, float] = {}
    for batching in (False, True):
        tag = "on" if batching else "off"
        if 1 in clients:
            summary[f"gradcam_latency_ratio_p50_1client_batching_{tag}"] = round(
                find(batching, True, 1).percentile(50) / find(batching, False, 1).percentile(50), 2)
        summary[f"gradcam_throughput_ratio_{most}clients_batching_{tag}"] = round(
            find(batching, False, most).rps / max(find(batching, True, most).rps, 1e-9), 2)
    for xai in (False, True):
        summary[f"batching_gain_{most}clients_gradcam_{'on' if xai else 'off'}"] = round(
            find(True, xai, most).rps / max(find(False, xai, most).rps, 1e-9), 2)
    print()
    for key, value in model_level.items():
        print(f"model level, {key}: {value} ms")
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"client process CPU: {client_cpu:.1f} s over {len(cases) * args.rounds * (args.duration + args.warmup):.0f} s of load;"
          f" cores: {os.cpu_count()}; image {len(image) / 1024:.0f} KiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": [c.row() for c in cases.values()], "summary": summary, "model_level_ms": model_level,
                                               "matrix": args.matrix, "model_dir": args.model_dir}, indent=1))


if __name__ == "__main__":
    main()
