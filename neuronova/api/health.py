"""``GET /health``: the one route without authentication (the backend guide's section 2.3.1)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from neuronova import __version__

router = APIRouter(tags=["health"])


def _memory_mb() -> float:
    # VmRSS of this process (Linux); the guide reports memory use in MB.
    try:
        with open("/proc/self/status") as fp:
            for line in fp:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


@router.get("/health", summary="Node status, version, uptime, models and devices")
def health(request: Request) -> dict[str, Any]:
    state = request.app.state
    body: dict[str, Any] = {
        "status": "healthy",
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "memory_usage_mb": _memory_mb(),
    }
    # Later parts (models, devices, queue) add their sections through providers on the app state.
    for provider in getattr(state, "health_providers", []):
        body.update(provider())
    if any(m.get("loaded") is False for m in body.get("models", {}).values()):
        body["status"] = "degraded"
    return body
