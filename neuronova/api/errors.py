"""Exception handlers: every HTTP failure answers the API's one error body.

``{"success": false, "error": {"code": CODE, "message": MESSAGE}}`` with the status of the error's
class (:mod:`neuronova.errors`), so the predict, status and DICOMweb routes report failures alike:

- a :class:`~neuronova.errors.NeuroNovaError`: its ``http_status`` and ``to_json()``, plus
  ``Retry-After`` for RateLimited and ``WWW-Authenticate: Bearer`` for Unauthorized;
- a request that fails validation: 400 INVALID_REQUEST naming the fields (not their values);
- Starlette's own HTTP errors (no route 404, wrong method 405, body too large 413, ...): the same body;
- anything else: 500 INTERNAL_SERVER_ERROR with a generic message. The log gets the exception type
  and the stack (files, lines, functions) but not the exception's message, which may quote patient
  data; the full exception goes to DEBUG.
"""

from __future__ import annotations

import logging
import math
import traceback
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neuronova.errors import NeuroNovaError, RateLimited, Unauthorized

logger = logging.getLogger(__name__)

#: Starlette's HTTP errors, by status, as the API's codes (the codes match neuronova.errors).
HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    413: "IMAGE_TOO_LARGE",
    415: "INVALID_REQUEST",
    422: "INVALID_REQUEST",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}
INTERNAL_MESSAGE = "internal server error; the node's log has the details"
#: At most this many field errors are listed in a validation message.
MAX_FIELD_ERRORS = 10
#: Frames of an unhandled exception's stack logged at ERROR.
STACK_FRAMES = 12


def error_body(code: str, message: str) -> dict[str, object]:
    return {"success": False, "error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers and the catch-all middleware on ``app`` (before it starts)."""
    app.add_exception_handler(NeuroNovaError, _neuronova_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_exception)  # type: ignore[arg-type]
    # An Exception handler alone runs in Starlette's ServerErrorMiddleware, which re-raises after
    # answering, so the server logs the exception's message anyway; the middleware answers and stops.
    # The handler stays for errors raised in middleware outside it.
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(CatchAllMiddleware)


def error_headers(exc: NeuroNovaError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


async def _neuronova_error(request: Request, exc: NeuroNovaError) -> Response:
    if exc.http_status >= 500:
        logger.warning("%s %s answered %d %s (%s)", request.method, _route(request.scope), exc.http_status,
                       exc.code, type(exc).__name__)
        logger.debug("%s: %s", exc.code, exc.message)
    return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=error_headers(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = [_field_problem(err) for err in exc.errors()]
    message = "invalid request: " + "; ".join(problems[:MAX_FIELD_ERRORS])
    if len(problems) > MAX_FIELD_ERRORS:
        message += f"; and {len(problems) - MAX_FIELD_ERRORS} more"
    return JSONResponse(error_body("INVALID_REQUEST", message), status_code=400)


def _field_problem(err: dict[str, Any]) -> str:
    # The pydantic error's "input" is left out on purpose: it may be patient data.
    loc = ".".join(str(part) for part in err.get("loc", ())) or "request"
    return f"{loc}: {err.get('msg', 'invalid')}"


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    headers = dict(exc.headers or {})
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=headers)
    code = HTTP_CODES.get(exc.status_code, "INVALID_REQUEST" if exc.status_code < 500 else "INTERNAL_SERVER_ERROR")
    phrase = _phrase(exc.status_code)
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if message == phrase and exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif message == phrase and exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


async def _unhandled(request: Request, exc: Exception) -> Response:
    _log_unhandled(request.scope, exc)
    return JSONResponse(error_body("INTERNAL_SERVER_ERROR", INTERNAL_MESSAGE), status_code=500)


def _log_unhandled(scope: Scope, exc: BaseException) -> None:
    # The innermost frames say where it broke; the outer ones are the framework's, the same every time.
    stack = "".join(traceback.format_tb(exc.__traceback__, limit=-STACK_FRAMES))
    causes = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(causes) < 5:
        causes.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    caused_by = f" (caused by {', '.join(causes)})" if causes else ""
    logger.error("unhandled %s%s in %s %s\n%s", type(exc).__name__, caused_by, scope.get("method", "?"),
                 _route(scope), stack.rstrip())
    logger.debug("unhandled exception, in full", exc_info=exc)


def _route(scope: Scope) -> str:
    # The route's template ("/studies/{study}"), never the concrete path, which may hold identifiers.
    route = scope.get("route")
    return getattr(route, "path", None) or "(no route)"


class CatchAllMiddleware:
    """Answer 500 with the error body for any exception that escapes the routes, and stop it there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            # Once the response has started nothing can be answered; Starlette's HTTP errors and its
            # body-limit signals belong to the middleware outside (FastAPI answers those with 413).
            if started or isinstance(exc, HTTPException) or type(exc).__module__.startswith("starlette.middleware"):
                raise
            _log_unhandled(scope, exc)
            response = JSONResponse(error_body("INTERNAL_SERVER_ERROR", INTERNAL_MESSAGE), status_code=500)
            await response(scope, receive, send)
