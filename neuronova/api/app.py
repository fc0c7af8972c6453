"""The HTTP application: DICOMweb, the status API, the predict API and /health, on one FastAPI app."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from neuronova import __version__
from neuronova.api.auth import Authenticator
from neuronova.api.errors import install_error_handlers
from neuronova.api.health import router as health_router
from neuronova.api.ratelimit import RateLimiter, require_token_rate_limited
from neuronova.config import Settings
from neuronova.dicomweb.stow import router as stow_router
from neuronova.metrics.observe import observe_study_stable
from neuronova.metrics.routes import router as metrics_router
from neuronova.store import InstanceStore, StoreResult
from neuronova.web.routes import router as web_router


def create_app(
    *,
    settings: Settings,
    store: InstanceStore,
    on_stored: Callable[[StoreResult], None] | None = None,
    state: dict[str, Any] | None = None,
) -> FastAPI:
    """Build the app; ``state`` adds entries to ``app.state`` (job store, enqueue, models) for the routers."""
    app = FastAPI(title="NeuroNova AI node", version=__version__)
    app.state.settings = settings
    app.state.store = store
    app.state.on_stored = on_stored
    app.state.started_at = time.time()
    app.state.health_providers = []
    app.state.authenticator = Authenticator.from_settings(settings, data_dir=settings.data_dir)
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    protected = [Depends(require_token_rate_limited)] if settings.dicomweb_auth else []
    app.include_router(health_router)
    app.include_router(stow_router, dependencies=protected)
    for module in ("neuronova.dicomweb.qido", "neuronova.dicomweb.wado"):
        _include_optional(app, module, protected)
    _include_optional(app, "neuronova.api.status", [Depends(require_token_rate_limited)])
    _include_optional(app, "neuronova.predict.routes", [])  # its routes declare auth and rate limits themselves
    app.include_router(metrics_router,
                       dependencies=[] if settings.metrics_public else [Depends(require_token_rate_limited)])
    app.include_router(web_router)  # the status page checks its session cookie (or bearer header) itself
    watcher = getattr(app.state, "watcher", None)
    if watcher is not None:  # subscribed after the job router: counts generations whose jobs were created
        watcher.subscribe(observe_study_stable)
    return app


def _include_optional(app: FastAPI, module: str, dependencies: list[Any]) -> None:
    # Parts that are being built in parallel; each is an APIRouter named ``router``.
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    app.include_router(mod.router, dependencies=dependencies)
