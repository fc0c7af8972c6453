"""``neuronova``: the command line. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuronova import __version__
from neuronova.config import Settings
from neuronova.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a TOML settings file (env NEURONOVA_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="where instances, the index and the queue live (env NEURONOVA_DATA_DIR)")
    p.add_argument("--queue-url", help="redis://host:port/db for a shared queue; unset: embedded SQLite queue")
    p.add_argument("--job-store-url", help="job table: redis://... (with persistence) or 'sqlite'")
    p.add_argument("--model-dir", type=Path, help="directory of models (default: the shipped demo models)")
    p.add_argument("--device", help="where models run: auto (GPU when usable), cpu, cuda or cuda:N (env NEURONOVA_DEVICE)")
    p.add_argument("--log-level", default="INFO")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronova", description="NeuroNova AI node")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node: DIMSE listener, DICOMweb, APIs, watcher, workers")
    _common(serve)
    serve.add_argument("--http-host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    serve.add_argument("--dimse-host", help="DIMSE bind address (default 0.0.0.0)")
    serve.add_argument("--dimse-port", type=int, help="DIMSE port (default 11112)")
    serve.add_argument("--ae-title", help="the node's AE title (default NEURONOVA)")
    serve.add_argument("--allowed-ae", dest="allowed_aes", action="append", default=[],
                       help="calling AE title allowed to associate (repeatable; default: any)")
    serve.add_argument("--stable-seconds", type=float, help="quiet seconds before a study is stable (default 10)")
    serve.add_argument("--workers", type=int, help="in-process queue consumers (default 1; 0: none)")
    serve.add_argument("--destination", dest="destinations", action="append", default=[],
                       help="where results go: dimse://AE@host:port or http(s)://host:port/dicom-web (repeatable)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate: the DIMSE port speaks TLS 1.2+ only "
                       "(BCP 195); also the client certificate of dimses:// destinations (env NEURONOVA_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (env NEURONOVA_TLS_KEY)")
    serve.add_argument("--tls-ca", type=Path, help="PEM CA: client certificates signed by it are required, and "
                       "dimses:// peers are verified against it (env NEURONOVA_TLS_CA)")

    worker = sub.add_parser("worker", help="a queue consumer alone (GPU machines sharing a Redis queue)")
    _common(worker)
    worker.add_argument("--workers", type=int, help="consumer threads in this process (default 1)")
    worker.add_argument("--metrics-port", type=int, help="serve this worker's /metrics on this port, on the "
                        "http host (env NEURONOVA_METRICS_PORT; default: none)")
    worker.add_argument("--node-url", help="the node's http(s):// URL, for a worker that shares no disk with it "
                        "(inputs by WADO-RS, results back over HTTP; env NEURONOVA_NODE_URL)")

    token = sub.add_parser("token", help="mint a bearer token from the node's secret (printed on the last line)")
    _common(token)
    token.add_argument("--sub", default="local", help="the token's subject")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")

    models = sub.add_parser("models", help="model maintenance")
    msub = models.add_subparsers(dest="models_command", required=True)
    train = msub.add_parser("train-demo", help="train the demo models on synthetic phantoms (not for clinical use)")
    train.add_argument("--out", type=Path, required=True, help="model directory to write")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quick", action="store_true", help="a short run (smoke test), not the shipped quality")
    train.add_argument("--study-model", action="store_true",
                       help="also train the four-sequence study model (mri_tumour_study) and measure it on held-out studies")
    return parser


_NOT_SETTINGS = {"command", "models_command", "log_level", "sub", "ttl", "out", "seed", "quick"}
_NOT_SETTINGS |= {"study_model"}


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    return Settings.load(overrides)


def _check_device(settings: Settings) -> None:
    """A GPU asked for and not usable stops the start here, with the reason, before anything listens."""
    from neuronova.models.runtime import DeviceError, check_device

    try:
        check_device(settings.device)
    except DeviceError as exc:
        raise ConfigError(f"NEURONOVA_DEVICE (--device): {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("serve", "worker"):
            _check_device(_settings(args))
        if args.command == "serve":
            from neuronova.node import Node

            Node(_settings(args)).serve_forever()
            return 0
        if args.command == "worker":
            from neuronova.jobs.worker import run_worker

            settings = _settings(args)
            if settings.metrics_port is not None:
                from neuronova.metrics.exporter import start_worker_metrics

                start_worker_metrics(settings)
            run_worker(settings, workers=settings.workers)
            return 0
        if args.command == "token":
            from neuronova.api.auth import token_command

            settings = _settings(args)
            return token_command(settings.data_dir, sub=args.sub, ttl=args.ttl, settings=settings)
        if args.command == "models" and args.models_command == "train-demo":
            from neuronova.models.train_demo import main as train_main

            train_main(args.out, seed=args.seed, quick=args.quick)
            if args.study_model:
                from neuronova.models.train_multiseq import main as train_study_main

                train_study_main([str(args.out), "--seed", str(args.seed), *(["--quick"] if args.quick else [])])
            return 0
    except ConfigError as exc:
        print(f"neuronova: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
