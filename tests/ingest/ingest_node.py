"""The node's two front doors and its store, alone in one process, for tests that kill it many times.

``python -m tests.ingest.ingest_node DATA_DIR DIMSE_PORT HTTP_PORT``: the same InstanceStore, DIMSE listener
(with its data phase) and STOW-RS route as ``neuronova serve``, without the models, jobs and outbox, whose
imports (torch, MONAI) take most of the full node's start-up (about 40 s on this shared 2-core machine,
against about 3 s for this). The power-cut test restarts the process after every cut.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from neuronova.api.errors import install_error_handlers
from neuronova.config import Settings
from neuronova.dicomweb import stow
from neuronova.scp_listener import start_listener
from neuronova.store import InstanceStore


def build(data_dir: Path, dimse_port: int) -> FastAPI:
    settings = Settings.load({"data_dir": data_dir, "dimse_port": dimse_port}, environ={})
    store = InstanceStore.from_settings(settings)
    start_listener(store, host="127.0.0.1", port=dimse_port, ae_title=settings.ae_title)
    app = FastAPI()
    app.state.store, app.state.settings = store, settings
    install_error_handlers(app)
    app.include_router(stow.router)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir, dimse_port, http_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    uvicorn.run(build(data_dir, dimse_port), host="127.0.0.1", port=http_port, log_level="warning")


if __name__ == "__main__":
    main()
