"""Dependencies of the DICOMweb routes: the store lives on the application's state."""

from __future__ import annotations

from fastapi import Request

from neuronova.store import InstanceStore


def get_store(request: Request) -> InstanceStore:
    return request.app.state.store  # type: ignore[no-any-return]
