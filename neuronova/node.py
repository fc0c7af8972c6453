"""The node: one process that runs the DIMSE listener, the study watcher, the HTTP app, the outbox and
(embedded) the queue consumer. ``neuronova serve`` builds one from the settings and runs it until
SIGTERM/SIGINT; ``neuronova worker`` runs the job system alone (:func:`neuronova.jobs.worker.run_worker`)."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn
from fastapi import Depends

from neuronova.api.app import create_app
from neuronova.api.auth import require_token
from neuronova.api.results import router as results_router
from neuronova.api.task_files import router as task_files_router
from neuronova.config import Settings
from neuronova.jobs.worker import build_job_system
from neuronova.models.shared import shared_registry
from neuronova.outbox.setup import build_outbox
from neuronova.outbox.tls import listener_context
from neuronova.scp_listener import start_listener
from neuronova.store import InstanceStore
from neuronova.store.watcher import StudyWatcher

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = InstanceStore.from_settings(settings)
        # DICOM TLS: a bad certificate, key or CA stops the start here, before anything listens.
        self.tls = listener_context(settings)
        self.watcher = StudyWatcher(self.store.index, stable_seconds=settings.stable_seconds,
                                    end_grace_seconds=settings.end_grace_seconds)
        self.jobs = build_job_system(settings, store=self.store)
        self.outbox = build_outbox(settings, store=self.store, jobs=self.jobs.jobs)
        self.jobs.runner.outbox = self.outbox
        self.jobs.reconciler.outbox = self.outbox
        self.watcher.subscribe(self.jobs.on_study_stable)
        self._listener: Any = None
        self.app = create_app(settings=settings, store=self.store,
                              state={"watcher": self.watcher, "outbox": self.outbox, **self.jobs.app_state()})
        self.app.state.health_providers.append(self.jobs.health)
        # Remote workers (no shared volume) send their results here; authenticated, not rate limited.
        self.app.include_router(results_router, dependencies=[Depends(require_token)])
        self.app.include_router(task_files_router, dependencies=[Depends(require_token)])
        # Models load once per process and are warmed up before the first study or request.
        self.app.state.models = shared_registry(settings.model_dir, device=settings.device)

    def start(self) -> None:
        """Start everything but the HTTP server (``serve_forever`` runs it)."""
        s = self.settings
        self.outbox.start()
        self.jobs.start(workers=s.workers)
        self.watcher.start()
        self._listener = start_listener(self.store, host=s.dimse_host, port=s.dimse_port, ae_title=s.ae_title,
                                        allowed_aes=s.allowed_aes, tls=self.tls,
                                        transfers=self.watcher)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.shutdown()
            self._listener = None
        self.watcher.stop()
        self.jobs.stop()
        self.outbox.stop()
        self.store.close()

    def serve_forever(self) -> None:
        self.start()
        try:
            config = uvicorn.Config(self.app, host=self.settings.http_host, port=self.settings.http_port,
                                    log_config=None, access_log=False, timeout_graceful_shutdown=5)
            uvicorn.Server(config).run()  # returns on SIGINT/SIGTERM
        finally:
            self.stop()
