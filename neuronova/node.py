"""The node: one process that runs the DIMSE listener, the study watcher, the HTTP app and (embedded) the
queue consumer. ``neuronova serve`` builds one from the settings and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from neuronova.api.app import create_app
from neuronova.config import Settings
from neuronova.scp_listener import start_listener
from neuronova.store import InstanceStore
from neuronova.store.watcher import StudyWatcher

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = InstanceStore(settings.data_dir, duplicate_policy=settings.duplicate_policy)
        self.watcher = StudyWatcher(self.store.index, stable_seconds=settings.stable_seconds)
        self._services: list[Any] = []
        self._listener: Any = None
        self.app = create_app(settings=settings, store=self.store, state={"watcher": self.watcher})

    def start(self) -> None:
        """Start everything but the HTTP server (tests and ``serve`` then run it)."""
        s = self.settings
        self._listener = start_listener(self.store, host=s.dimse_host, port=s.dimse_port, ae_title=s.ae_title,
                                        allowed_aes=s.allowed_aes)
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        if self._listener is not None:
            self._listener.shutdown()
            self._listener = None
        for service in reversed(self._services):
            service.stop()
        self.store.close()

    def serve_forever(self) -> None:
        self.start()
        try:
            config = uvicorn.Config(self.app, host=self.settings.http_host, port=self.settings.http_port,
                                    log_config=None, access_log=False, timeout_graceful_shutdown=5)
            uvicorn.Server(config).run()  # returns on SIGINT/SIGTERM
        finally:
            self.stop()
