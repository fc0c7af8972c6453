"""Per-client token buckets, alone and as FastAPI dependencies composed with authentication."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from neuronova.api.auth import Authenticator, TokenClaims, require_token
from neuronova.api.errors import install_error_handlers
from neuronova.api.ratelimit import RateLimiter, rate_limit, require_token_rate_limited
from neuronova.config import Settings
from neuronova.errors import RateLimited


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_bucket_empties_then_refills(clock: FakeClock) -> None:
    limiter = RateLimiter(per_minute=3, clock=clock)  # one token back every 20 s
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 20
    assert info.value.http_status == 429 and info.value.code == "RATE_LIMIT_EXCEEDED"
    clock.advance(19.5)
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 1  # 0.5 s rounds up, never 0
    clock.advance(0.5)
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    # A long idle period refills to the burst size, not beyond.
    clock.advance(3600)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_clients_have_separate_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(per_minute=1, clock=clock)
    limiter.check("sub:alice")
    limiter.check("sub:bob")
    with pytest.raises(RateLimited):
        limiter.check("sub:alice")


def test_burst_and_fast_rates(clock: FakeClock) -> None:
    limiter = RateLimiter(per_minute=6000, burst=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 1  # 10 ms away, but Retry-After is whole seconds >= 1
    clock.advance(0.01)
    limiter.check("a")
    with pytest.raises(ValueError):
        RateLimiter(per_minute=0)
    with pytest.raises(ValueError):
        RateLimiter(per_minute=1, burst=0)


def test_idle_buckets_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(per_minute=60, clock=clock)  # refills fully in 60 s
    for i in range(100):
        limiter.check(f"ip:10.0.0.{i}")
    assert len(limiter) == 100
    clock.advance(61)
    limiter.check("ip:10.0.1.1")
    assert len(limiter) == 1


def test_thread_safe_exact_count(clock: FakeClock) -> None:
    limiter = RateLimiter(per_minute=100, clock=clock)  # the clock stands still: exactly 100 pass
    allowed = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def hammer() -> None:
        nonlocal allowed
        barrier.wait()
        for _ in range(50):
            try:
                limiter.check("shared")
            except RateLimited:
                continue
            with lock:
                allowed += 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == 100


def test_from_settings() -> None:
    limiter = RateLimiter.from_settings(Settings(rate_limit_per_minute=42))
    assert limiter.per_minute == 42 and limiter.capacity == 42


# Through FastAPI


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(secret=secrets.token_hex(64), audience="neuronova", issuer="neuronova")


@pytest.fixture
def client(authenticator: Authenticator, clock: FakeClock) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.state.authenticator = authenticator
    app.state.rate_limiter = RateLimiter(per_minute=2, clock=clock)

    @app.get("/predict")
    async def predict(claims: TokenClaims = Depends(require_token_rate_limited)) -> dict[str, str]:
        return {"sub": claims.sub}

    @app.get("/chained", dependencies=[Depends(require_token), Depends(rate_limit)])
    async def chained() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health", dependencies=[Depends(rate_limit)])
    async def health() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as c:
        yield c


def auth(authenticator: Authenticator, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {authenticator.mint(sub=sub)}"}


def test_429_with_retry_after_then_allowed(client: TestClient, authenticator: Authenticator, clock: FakeClock) -> None:
    alice = auth(authenticator, "alice")
    assert [client.get("/predict", headers=alice).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/predict", headers=alice)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "30"
    body = limited.json()
    assert body["success"] is False and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert "2 requests per minute" in body["error"]["message"]
    # Keyed by subject: another token from the same address has its own bucket.
    assert client.get("/predict", headers=auth(authenticator, "bob")).status_code == 200
    clock.advance(29)
    assert client.get("/predict", headers=alice).headers["retry-after"] == "1"
    clock.advance(1)
    assert client.get("/predict", headers=alice).json() == {"sub": "alice"}


def test_chained_dependencies_key_on_subject(client: TestClient, authenticator: Authenticator) -> None:
    for sub in ("carol", "dave"):
        headers = auth(authenticator, sub)
        assert [client.get("/chained", headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/chained").status_code == 401  # auth still comes first


def test_unauthenticated_route_keys_on_address(client: TestClient, clock: FakeClock) -> None:
    assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(30)
    assert client.get("/health").status_code == 200


def test_refused_tokens_are_charged_to_the_address(client: TestClient, authenticator: Authenticator) -> None:
    guess = {"Authorization": "Bearer not.a.token"}
    assert [client.get("/predict", headers=guess).status_code for _ in range(3)] == [401, 401, 429]
    # A valid token is charged to its subject, not to the exhausted address bucket.
    assert client.get("/predict", headers=auth(authenticator, "erin")).status_code == 200
