"""Bearer-token authentication for the HTTP APIs.

Tokens are JWTs signed with HS256 and one shared secret: the node mints them itself (``neuronova token``)
for the few clients next to a PACS, so there is no key server and no public-key algorithm. The algorithm
is pinned on decode, so a token claiming ``alg: none`` or an asymmetric algorithm is refused before any
key is used, and ``exp``, ``aud``, ``iss`` and ``sub`` must be present.

The secret is ``Settings.jwt_secret`` (``NEURONOVA_JWT_SECRET``) or, when unset, a random one created on
first start in ``<data_dir>/jwt_secret`` (mode 0600) and read back afterwards, so tokens survive restarts.

Wiring, for the app factory::

    app.state.authenticator = Authenticator.from_settings(settings)

    @router.get("/thing", dependencies=[Depends(require_token)])   # or: claims = Depends(require_token)

or, without ``app.state``, ``Depends(authenticator)`` with the instance itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from neuronova.errors import ConfigError, Unauthorized

if TYPE_CHECKING:
    from neuronova.config import Settings

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
#: HS256 keys shorter than the hash output weaken the MAC (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32
SECRET_FILENAME = "jwt_secret"
#: Clock skew tolerated between the minting host and this one.
LEEWAY_SECONDS = 10.0
#: A bearer token longer than this is refused before it is parsed (ours are about 250 bytes).
MAX_TOKEN_CHARS = 8192
REQUIRED_CLAIMS = ("exp", "aud", "iss", "sub")

#: Declares the scheme in OpenAPI (the "Authorize" button); parsing is ours, so the 401 says why.
bearer_scheme = HTTPBearer(auto_error=False, bearerFormat="JWT", description="HS256 JWT from `neuronova token`")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of one request's token."""

    sub: str
    claims: Mapping[str, Any] = field(repr=False)


def load_or_create_secret(data_dir: Path) -> str:
    """Return the secret in ``<data_dir>/jwt_secret``, creating a random one (mode 0600) if there is none.

    Creation is atomic: the secret is written and fsync'd under a temporary name, then hard-linked to
    its final name, which fails if another process got there first; that process's secret wins. So no
    reader ever sees a half-written file. Raises ConfigError if the file holds fewer than 32 bytes.
    """
    data_dir = Path(data_dir)
    path = data_dir / SECRET_FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create_secret_file(path)
    return _read_secret_file(path)


def _create_secret_file(path: Path) -> None:
    secret = secrets.token_hex(64)  # 64 random bytes, 128 hex characters
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact, whatever the umask
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    except OSError:
        # A filesystem without hard links: fall back to an exclusive create of the final name.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, (secret + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
    else:
        logger.info("created a new JWT secret in %s", path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the secret file itself is synced
    finally:
        os.close(fd)


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"jwt_secret: cannot read {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users (mode %o); chmod 600 it", path, stat.S_IMODE(mode))
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"jwt_secret: {path} holds {len(secret.encode())} bytes, at least {MIN_SECRET_BYTES} are needed; "
            "delete the file to have a new secret generated, or set NEURONOVA_JWT_SECRET"
        )
    return secret


def resolve_secret(settings: Settings, *, data_dir: Path | None = None) -> str:
    """The configured secret, else the one in the data directory (created on first use)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret
    return load_or_create_secret(settings.data_dir if data_dir is None else data_dir)


def mint_token(
    secret: str,
    *,
    sub: str = "local",
    ttl_seconds: float = 3600,
    audience: str,
    issuer: str,
    now: float | None = None,
) -> str:
    """Sign an HS256 token for ``sub`` valid ``ttl_seconds`` from ``now`` (default: the current time)."""
    if not sub:
        raise ValueError("sub must be a non-empty string")
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    issued = int(time.time() if now is None else now)
    payload = {
        "sub": sub,
        "aud": audience,
        "iss": issuer,
        "iat": issued,
        "exp": issued + int(ttl_seconds),
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


class Authenticator:
    """Verifies bearer tokens against one secret, audience and issuer.

    An instance is a FastAPI dependency (``Depends(authenticator)``) returning the request's
    :class:`TokenClaims`; it also records them in ``request.state.token_claims`` so that the rate
    limiter can key on the subject.
    """

    def __init__(self, *, secret: str, audience: str, issuer: str, leeway_seconds: float = LEEWAY_SECONDS) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.audience = audience
        self.issuer = issuer
        self.leeway_seconds = leeway_seconds
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})

    def __repr__(self) -> str:  # never show the secret
        return f"Authenticator(audience={self.audience!r}, issuer={self.issuer!r})"

    @classmethod
    def from_settings(cls, settings: Settings, *, data_dir: Path | None = None) -> Authenticator:
        return cls(
            secret=resolve_secret(settings, data_dir=data_dir),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    def mint(self, *, sub: str = "local", ttl_seconds: float = 3600, now: float | None = None) -> str:
        return mint_token(
            self._secret, sub=sub, ttl_seconds=ttl_seconds, audience=self.audience, issuer=self.issuer, now=now
        )

    def authenticate(self, authorization: str | None) -> TokenClaims:
        """Verify an ``Authorization`` header value; raise Unauthorized saying why (never quoting the token)."""
        if authorization is None or not authorization.strip():
            raise Unauthorized("missing Authorization header; expected 'Authorization: Bearer <token>'")
        parts = authorization.split()
        if parts[0].lower() != "bearer":
            raise Unauthorized("the Authorization header must use the Bearer scheme")
        if len(parts) != 2:
            raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
        return self.decode(parts[1])

    def decode(self, token: str) -> TokenClaims:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
        try:
            claims = self._jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(_why(exc)) from None  # the chained PyJWT error may carry token parts
        sub = claims["sub"]
        if not sub:
            raise Unauthorized("token has an empty 'sub' claim")
        return TokenClaims(sub=sub, claims=MappingProxyType(claims))

    async def __call__(
        self,
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
    ) -> TokenClaims:
        claims = self.authenticate(request.headers.get("authorization"))
        request.state.token_claims = claims
        return claims


def _why(exc: jwt.InvalidTokenError) -> str:
    # Most specific first: several of these subclass DecodeError or each other.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the required '{exc.claim}' claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience does not match this node"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer does not match this node"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"token algorithm not allowed (only {ALGORITHM} is accepted)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature is invalid"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not yet valid (nbf or iat in the future)"
    if isinstance(exc, jwt.DecodeError):
        return "token is not a well-formed JWT"
    return f"invalid token: {exc}"


async def require_token(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
) -> TokenClaims:
    """Dependency: verify the bearer token with ``request.app.state.authenticator``; return its claims."""
    authenticator = getattr(request.app.state, "authenticator", None)
    if not isinstance(authenticator, Authenticator):
        raise RuntimeError("app.state.authenticator is not set; build it with Authenticator.from_settings()")
    return await authenticator(request)


def token_command(data_dir: Path | None, sub: str = "local", ttl: float = 3600, settings: Settings | None = None) -> int:
    """``neuronova token``: mint a token; print a note on stderr and the token alone on stdout's last line.

    ``data_dir`` (when given) overrides ``settings.data_dir`` for finding or creating the secret file;
    ``NEURONOVA_JWT_SECRET`` (``settings.jwt_secret``) wins over the file. Returns the exit status (0).
    """
    if settings is None:
        from neuronova.config import Settings

        settings = Settings.load()
    authenticator = Authenticator.from_settings(settings, data_dir=data_dir)
    token = authenticator.mint(sub=sub, ttl_seconds=ttl)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + ttl))
    print(f"# token for sub={sub!r}, audience={settings.jwt_audience!r}, expires {expires}", file=sys.stderr)
    print(token, flush=True)
    return 0
