"""``GET /metrics``: the process's counters and histograms, and the gauges read from durable state.

Authentication is the app's choice (``Settings.metrics_public``): by default the route takes the same bearer
token as the API (Prometheus: ``authorization: {credentials_file: ...}`` in the scrape config); with
``metrics_public`` it is open, for a scraper kept out by a network policy instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.responses import Response

from neuronova.metrics.collectors import NodeCollector

router = APIRouter(tags=["operations"])


class ChainedRegistry(Collector):
    """Several collectors exposed as one (the process-wide registry and one app's state collector): apps built
    in one process (tests) each keep their own state collector, none registered globally."""

    def __init__(self, collectors: Iterable[Any]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def app_registry(state: Any) -> ChainedRegistry:
    """What ``/metrics`` of an app exposes: the process's metrics and the app state's gauges."""
    return ChainedRegistry([REGISTRY, NodeCollector(state)])


@router.get("/metrics", summary="Prometheus metrics (text exposition format; OpenMetrics when asked)",
            response_class=Response)
def metrics(request: Request) -> Response:
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = request.app.state.metrics_registry = app_registry(request.app.state)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=None, headers={"Content-Type": content_type})
