"""Bearer-token authentication and the API's error bodies, through TestClient and a real uvicorn server."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from neuronova.api.auth import (
    SECRET_FILENAME,
    Authenticator,
    TokenClaims,
    load_or_create_secret,
    mint_token,
    require_token,
    token_command,
)
from neuronova.api.errors import install_error_handlers
from neuronova.config import Settings
from neuronova.errors import ConfigError, InvalidDicom, Unauthorized

AUD = "neuronova"
ISS = "neuronova"
SECRET = secrets.token_hex(64)
PATIENT_NAME = "DOE^JANE"


class Item(BaseModel):
    name: str
    count: int


def make_app(authenticator: Authenticator) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.authenticator = authenticator

    @app.get("/protected")
    async def protected(claims: TokenClaims = Depends(require_token)) -> dict[str, str]:
        return {"sub": claims.sub}

    @app.post("/items", dependencies=[Depends(require_token)])
    async def items(item: Item) -> dict[str, int]:
        return {"count": item.count}

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError(f"cannot process study of {PATIENT_NAME}")

    @app.get("/boom-sync")
    def boom_sync() -> None:
        raise KeyError(PATIENT_NAME)

    @app.get("/bad-dicom")
    async def bad_dicom() -> None:
        raise InvalidDicom("not a DICOM file")

    return app


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(secret=SECRET, audience=AUD, issuer=ISS)


@pytest.fixture
def client(authenticator: Authenticator) -> Iterator[TestClient]:
    with TestClient(make_app(authenticator)) as c:
        yield c


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    """A JWT built by hand, for algorithms PyJWT would not sign here (none, RS256 without a key)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)])


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "alice", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response, reason: str, token: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert reason in body["error"]["message"]
    if token:
        assert token not in response.text  # never echoed


def test_valid_token_returns_claims(client: TestClient, authenticator: Authenticator) -> None:
    token = authenticator.mint(sub="alice", ttl_seconds=60)
    response = client.get("/protected", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"sub": "alice"}
    # The scheme is case-insensitive (RFC 7235).
    assert client.get("/protected", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_mint_token_claims() -> None:
    token = mint_token(SECRET, sub="bob", ttl_seconds=120, audience=AUD, issuer=ISS, now=1_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUD, issuer=ISS,
                         options={"verify_exp": False})
    assert payload == {"sub": "bob", "aud": AUD, "iss": ISS, "iat": 1_000_000, "exp": 1_000_120}
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint_token(SECRET, ttl_seconds=0, audience=AUD, issuer=ISS)
    with pytest.raises(ValueError, match="32 bytes"):
        mint_token("short", audience=AUD, issuer=ISS)


@pytest.mark.parametrize(
    ("name", "make_token", "reason"),
    [
        ("alg none", lambda: forge({"alg": "none", "typ": "JWT"}, claims()), "algorithm not allowed"),
        ("alg None, signed", lambda: forge({"alg": "None"}, claims(), b"x"), "algorithm not allowed"),
        ("no alg", lambda: forge({"typ": "JWT"}, claims(), b"x"), "algorithm not allowed"),
        ("HS512", lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), "algorithm not allowed"),
        ("RS256", lambda: forge({"alg": "RS256", "typ": "JWT"}, claims(), os.urandom(256)), "algorithm not allowed"),
        ("expired", lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET), "expired"),
        ("wrong audience", lambda: jwt.encode(claims(aud="someone-else"), SECRET), "audience"),
        ("audience list", lambda: jwt.encode(claims(aud=[AUD, "other"]), SECRET), "audience"),
        ("wrong issuer", lambda: jwt.encode(claims(iss="evil"), SECRET), "issuer"),
        ("missing exp", lambda: jwt.encode(claims(exp=None), SECRET), "'exp'"),
        ("missing aud", lambda: jwt.encode(claims(aud=None), SECRET), "'aud'"),
        ("missing iss", lambda: jwt.encode(claims(iss=None), SECRET), "'iss'"),
        ("missing sub", lambda: jwt.encode(claims(sub=None), SECRET), "'sub'"),
        ("wrong secret", lambda: jwt.encode(claims(), secrets.token_hex(64)), "signature is invalid"),
        ("not yet valid", lambda: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET), "not yet valid"),
        ("garbage", lambda: "not-a-jwt", "not a well-formed JWT"),
        ("bad base64", lambda: "a.b.c", "not a well-formed JWT"),
        ("huge", lambda: "a" * 10_000, "longer than"),
    ],
)
def test_bad_tokens_are_refused(client: TestClient, name: str, make_token: object, reason: str) -> None:
    assert callable(make_token)
    token = make_token()
    assert_401(client.get("/protected", headers=bearer(token)), reason, token)


def test_expiry_allows_small_clock_skew(client: TestClient) -> None:
    # Expired 3 s ago is inside the 10 s leeway; a minute ago is not (above).
    token = jwt.encode(claims(exp=int(time.time()) - 3), SECRET)
    assert client.get("/protected", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": ""}, "missing Authorization header"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "Bearer scheme"),
        ({"Authorization": "Bearer"}, "malformed"),
        ({"Authorization": "Bearer a b"}, "malformed"),
    ],
)
def test_missing_or_malformed_header(client: TestClient, headers: dict[str, str], reason: str) -> None:
    assert_401(client.get("/protected", headers=headers), reason)


def test_authenticator_refuses_short_secret_and_hides_it() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Authenticator(secret="x" * 31, audience=AUD, issuer=ISS)
    assert SECRET not in repr(Authenticator(secret=SECRET, audience=AUD, issuer=ISS))


def test_unauthorized_raised_directly(authenticator: Authenticator) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticator.authenticate(None)
    assert info.value.http_status == 401


def test_openapi_declares_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/protected"]["get"]["security"] == [{"HTTPBearer": []}]


def test_missing_authenticator_state_is_a_500() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/p", dependencies=[Depends(require_token)])
    async def p() -> None:
        return None

    with TestClient(app) as c:
        response = c.get("/p")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_SERVER_ERROR"


# Secret file


def test_secret_file_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # does not exist yet: first start creates it
    first = load_or_create_secret(data_dir)
    path = data_dir / SECRET_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 128 and bytes.fromhex(first)  # 64 random bytes, hex
    assert load_or_create_secret(data_dir) == first
    assert [p.name for p in data_dir.iterdir()] == [SECRET_FILENAME]  # no temporary left behind
    # A token minted with the first start's secret passes after a "restart".
    token = mint_token(first, audience=AUD, issuer=ISS)
    restarted = Authenticator.from_settings(Settings(data_dir=data_dir))
    assert restarted.decode(token).sub == "local"


def test_secret_file_concurrent_first_start(tmp_path: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(load_or_create_secret(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (tmp_path / SECRET_FILENAME).read_text().strip() == results[0]


def test_short_secret_file_refused(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILENAME).write_text("too-short\n")
    with pytest.raises(ConfigError, match="jwt_secret.*9 bytes"):
        load_or_create_secret(tmp_path)


def test_settings_secret_wins_over_file(tmp_path: Path) -> None:
    configured = "s" * 40
    auth = Authenticator.from_settings(Settings(data_dir=tmp_path, jwt_secret=configured, jwt_audience="a2"))
    assert not (tmp_path / SECRET_FILENAME).exists()
    assert auth.decode(mint_token(configured, audience="a2", issuer=ISS)).sub == "local"


def test_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path / "ignored")
    assert token_command(tmp_path, "robot", 90, settings) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    auth = Authenticator(secret=load_or_create_secret(tmp_path), audience=AUD, issuer=ISS)
    decoded = auth.decode(token)
    assert decoded.sub == "robot"
    assert decoded.claims["exp"] - decoded.claims["iat"] == 90
    assert not (tmp_path / "ignored").exists()


# Error bodies


def test_validation_error_is_400_naming_fields(client: TestClient, authenticator: Authenticator) -> None:
    response = client.post("/items", headers=bearer(authenticator.mint()), json={"name": "x", "count": "many"})
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert "body.count" in body["error"]["message"]
    assert "many" not in body["error"]["message"]  # the value is not echoed
    missing = client.post("/items", headers=bearer(authenticator.mint()), json={})
    assert missing.status_code == 400
    assert "body.name" in missing.json()["error"]["message"] and "body.count" in missing.json()["error"]["message"]
    broken = client.post("/items", headers={**bearer(authenticator.mint()), "Content-Type": "application/json"},
                         content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "INVALID_REQUEST"


def test_auth_runs_before_validation(client: TestClient) -> None:
    assert_401(client.post("/items", json={"name": "x"}), "missing Authorization header")


def test_unhandled_exception_is_500_without_patient_data(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    for path, exc_type in (("/boom", "ValueError"), ("/boom-sync", "KeyError")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="neuronova"):
            response = client.get(path)
        assert response.status_code == 500
        assert response.json() == {
            "success": False,
            "error": {"code": "INTERNAL_SERVER_ERROR", "message": "internal server error; the node's log has the details"},
        }
        assert PATIENT_NAME not in response.text
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        logged = errors[0].getMessage()
        assert exc_type in logged and path in logged and "test_auth.py" in logged  # type, route, stack
        assert PATIENT_NAME not in "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)


def test_neuronova_error_uses_its_status_and_code(client: TestClient) -> None:
    response = client.get("/bad-dicom")
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": {"code": "INVALID_IMAGE_FORMAT", "message": "not a DICOM file"}}


def test_404_and_405_use_the_error_body(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = client.delete("/protected")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert wrong.headers["allow"] == "GET"


# A real server


@pytest.fixture
def live_server(authenticator: Authenticator) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from now on: no race with another test
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(authenticator), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def test_real_server(live_server: str, authenticator: Authenticator, caplog: pytest.LogCaptureFixture) -> None:
    with httpx.Client(base_url=live_server, timeout=5) as http:
        ok = http.get("/protected", headers=bearer(authenticator.mint(sub="pacs")))
        assert ok.status_code == 200 and ok.json() == {"sub": "pacs"}
        assert_401(http.get("/protected"), "missing Authorization header")
        expired = jwt.encode(claims(exp=int(time.time()) - 60), SECRET)
        assert_401(http.get("/protected", headers=bearer(expired)), "expired", expired)
        none_token = forge({"alg": "none"}, claims())
        assert_401(http.get("/protected", headers=bearer(none_token)), "algorithm not allowed")
        with caplog.at_level(logging.INFO):
            boom = http.get("/boom")
        assert boom.status_code == 500 and boom.json()["error"]["code"] == "INTERNAL_SERVER_ERROR"
        # Nothing, uvicorn's "Exception in ASGI application" included, logged the patient's name.
        assert PATIENT_NAME not in caplog.text
        assert http.get("/nowhere").json()["error"]["code"] == "NOT_FOUND"
