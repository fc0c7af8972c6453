"""Per-client rate limiting: one token bucket per client, in memory.

A client is the JWT subject when the request was authenticated, else its IP address (behind a reverse
proxy, run uvicorn with ``--proxy-headers --forwarded-allow-ips`` so that ``request.client`` is the real
peer). A bucket holds up to ``burst`` requests (default: one minute's worth) and refills at
``per_minute / 60`` per second; an empty bucket answers 429 with ``Retry-After``.

The buckets live in this process: with several server processes each has its own buckets, so a client
may make up to ``processes x per_minute`` requests a minute. The node's default is one HTTP process.

Wiring, for the app factory::

    app.state.authenticator = Authenticator.from_settings(settings)
    app.state.rate_limiter = RateLimiter.from_settings(settings)

    @router.post("/predict")
    async def predict(claims: TokenClaims = Depends(require_token_rate_limited)): ...

    @router.get("/health", dependencies=[Depends(rate_limit)])   # unauthenticated: keyed by IP
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from neuronova.api.auth import Authenticator, TokenClaims, bearer_scheme
from neuronova.errors import RateLimited, Unauthorized

if TYPE_CHECKING:
    from neuronova.config import Settings

_T = TypeVar("_T")
#: Float rounding of "now - then" must not refuse a client that waited exactly as long as it was told.
_EPSILON = 1e-9


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Thread-safe token buckets keyed by client; ``clock`` is injectable (monotonic seconds) for tests."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.per_minute = per_minute
        self.capacity = float(per_minute if burst is None else burst)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        # An idle bucket that has refilled to capacity is the same as no bucket: forget it, so that
        # memory stays bounded by the clients of the last refill period.
        self._refill_seconds = self.capacity / self.rate
        self._next_sweep = clock() + self._refill_seconds

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        return cls(per_minute=settings.rate_limit_per_minute, clock=clock)

    def check(self, key: str) -> None:
        """Take one token from ``key``'s bucket, or raise RateLimited with the seconds until one is back."""
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=self.capacity, updated=now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0 - _EPSILON:
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
                return
            wait = (1.0 - bucket.tokens) / self.rate
        retry_after = max(1, math.ceil(wait))
        raise RateLimited(
            f"rate limit of {self.per_minute} requests per minute exceeded; retry in {retry_after} s",
            retry_after=retry_after,
        )

    def _sweep(self, now: float) -> None:
        stale = [k for k, b in self._buckets.items() if now - b.updated >= self._refill_seconds]
        for key in stale:
            del self._buckets[key]
        self._next_sweep = now + self._refill_seconds

    def __len__(self) -> int:
        return len(self._buckets)

    async def __call__(self, request: Request) -> None:
        """Dependency: charge the request's client (see :func:`client_key`)."""
        self.check(client_key(request))


def client_key(request: Request) -> str:
    """``sub:<subject>`` when authentication already ran for this request, else ``ip:<address>``."""
    claims = getattr(request.state, "token_claims", None)
    if isinstance(claims, TokenClaims):
        return f"sub:{claims.sub}"
    host = request.client.host if request.client is not None else "unknown"
    return f"ip:{host}"


def _state(request: Request, name: str, kind: type[_T]) -> _T:
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kind):
        raise RuntimeError(f"app.state.{name} is not set; build it with {kind.__name__}.from_settings()")
    return value


async def rate_limit(request: Request) -> None:
    """Dependency: charge ``request.app.state.rate_limiter`` for this client.

    Keyed by subject if an auth dependency ran before it (list it after ``require_token``), else by IP.
    """
    limiter = _state(request, "rate_limiter", RateLimiter)
    limiter.check(client_key(request))


async def require_token_rate_limited(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
) -> TokenClaims:
    """Dependency: authenticate, then charge the subject's bucket; return the claims.

    A request whose token is refused is charged to its IP address first, so guessing tokens is
    limited too; a valid token is charged to its subject, wherever it comes from.
    """
    authenticator = _state(request, "authenticator", Authenticator)
    limiter = _state(request, "rate_limiter", RateLimiter)
    try:
        claims = await authenticator(request)
    except Unauthorized:
        limiter.check(client_key(request))  # a 429 here replaces the 401
        raise
    limiter.check(client_key(request))
    return claims
