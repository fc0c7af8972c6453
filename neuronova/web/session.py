"""Who is looking at the status page: the API's bearer token, carried by a browser in a cookie.

A browser cannot send an ``Authorization`` header when it follows a link, so the page takes the same JWT the API
takes, once, from the login form (or a ``?token=`` link, which is redirected away at once), and keeps it in a
cookie that is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and scoped
to ``/ui``; it expires with the token. A request with an ``Authorization: Bearer`` header works as well (curl).

Forms that change something (re-run, log out) carry a CSRF token: an HMAC of the session's JWT under a key of
this process, compared in constant time. With SameSite=Strict that is two independent defences; an ``Origin``
header naming another site is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from neuronova.api.auth import Authenticator, TokenClaims
from neuronova.errors import NeuroNovaError, Unauthorized

COOKIE_NAME = "neuronova_session"
COOKIE_PATH = "/ui"


class Forbidden(NeuroNovaError):
    """A state-changing form without a valid CSRF token, or from another origin."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="FORBIDDEN", http_status=403)


def _authenticator(request: Request) -> Authenticator:
    authenticator = getattr(request.app.state, "authenticator", None)
    if not isinstance(authenticator, Authenticator):
        raise RuntimeError("app.state.authenticator is not set")
    return authenticator


def session_token(request: Request) -> tuple[str, bool] | None:
    """The request's JWT and whether it came from the cookie (False: an Authorization header)."""
    header = request.headers.get("authorization")
    if header:
        parts = header.split()
        return (parts[1], False) if len(parts) == 2 and parts[0].lower() == "bearer" else ("", False)
    cookie = request.cookies.get(COOKIE_NAME)
    return (cookie, True) if cookie else None


def verify(request: Request, token: str) -> TokenClaims:
    """The token's claims, or Unauthorized saying why."""
    return _authenticator(request).decode(token)


def current_claims(request: Request) -> TokenClaims | None:
    """The verified claims of the request's session, None when there is none or it is not valid."""
    found = session_token(request)
    if found is None:
        return None
    try:
        return verify(request, found[0])
    except Unauthorized:
        return None


def set_session(response: Response, request: Request, token: str, claims: TokenClaims) -> None:
    max_age = max(0, int(float(claims.claims["exp"]) - time.time()))
    response.set_cookie(COOKIE_NAME, token, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def _csrf_key(request: Request) -> bytes:
    key = getattr(request.app.state, "web_csrf_key", None)
    if key is None:
        key = request.app.state.web_csrf_key = secrets.token_bytes(32)
    return key


def csrf_token(request: Request) -> str:
    """The form token of this request's session ('' without a session)."""
    found = session_token(request)
    if found is None:
        return ""
    return hmac.new(_csrf_key(request), found[0].encode(), hashlib.sha256).hexdigest()


def check_form(request: Request, form_token: str | None) -> TokenClaims:
    """Authorise a state-changing form post: a valid session, and, for a cookie session, the same origin and the
    session's CSRF token. Raises Unauthorized or Forbidden."""
    found = session_token(request)
    if found is None:
        raise Unauthorized("no session; log in at /ui/login")
    claims = verify(request, found[0])
    if not found[1]:
        return claims  # an Authorization header: a browser never adds one on its own
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        raise Forbidden("the form was posted from another origin")
    if not form_token or not hmac.compare_digest(form_token, csrf_token(request)):
        raise Forbidden("the form's CSRF token is missing or does not match this session; reload the page")
    return claims
