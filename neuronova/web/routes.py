"""The status page under ``/ui``: recent studies, their series and routing, jobs, deliveries, result thumbnails
and a re-run button, rendered on the server (Jinja2), refreshing itself every few seconds.

Thin routes over the status API's own functions (:mod:`neuronova.api.status`), so the page shows exactly what
``/api/v1`` answers. Authentication: :mod:`neuronova.web.session` (the API's JWT, kept in a cookie).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from neuronova.api import status as status_api
from neuronova.errors import NeuroNovaError, NotFound, Unauthorized
from neuronova.store.uids import is_valid_uid
from neuronova.web import session
from neuronova.web.thumbnails import thumbnail_png

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Seconds between the page's own reloads: while something is moving, and when all is settled.
REFRESH_SECONDS = 5
IDLE_REFRESH_SECONDS = 30
RECENT_STUDIES = 20
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
RESULT_KINDS = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR", SC_SOP_CLASS: "SC"}
#: No script, no frames, no other site: the page is HTML and images from this origin, with inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _when(value: str | None) -> str:
    """ISO 8601 UTC as ``YYYY-MM-DD HH:MM:SS``."""
    if not value:
        return "–"
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


_env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
_env.filters.update(when=_when, seconds=_seconds, short_uid=lambda uid: f"…{uid[-12:]}" if len(uid) > 14 else uid)


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    claims = session.current_claims(request)
    context.setdefault("refresh", REFRESH_SECONDS)
    html = _env.get_template(template).render(
        user=claims.sub if claims else None, csrf=session.csrf_token(request),
        now=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)


def _token_link(request: Request) -> Response | None:
    """``?token=`` once: verify it, keep it in the cookie, and send the browser to the URL without it."""
    token = request.query_params.get("token")
    if token is None:
        return None
    rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    try:
        claims = session.verify(request, token)
    except Unauthorized as exc:
        return _page(request, "login.html", status_code=401, error=exc.message, next=request.url.path)
    response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
    session.set_session(response, request, token, claims)
    return response


def _guard(request: Request) -> Response | None:
    """A response that replaces the page (the token link's redirect, or the login form), or None to go on."""
    linked = _token_link(request)
    if linked is not None:
        return linked
    if session.current_claims(request) is None:
        return _login_redirect(request)
    return None


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/ui") and not value.startswith("//") else "/ui/"


@router.get("", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = Query(None)) -> Response:
    return _page(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, token: str = Form(""), next: str = Form("/ui/")) -> Response:
    token = token.strip()
    try:
        claims = session.verify(request, token)
    except Unauthorized as exc:
        return _page(request, "login.html", status_code=401, next=_safe_next(next), error=exc.message)
    response = RedirectResponse(_safe_next(next), status_code=303)
    session.set_session(response, request, token, claims)
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    try:
        session.check_form(request, csrf)
    except NeuroNovaError as exc:
        return _page(request, "error.html", status_code=exc.http_status, message=exc.message)
    response = RedirectResponse("/ui/login", status_code=303)
    session.clear_session(response, request)
    return response


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    if (early := _guard(request)) is not None:
        return early
    state = request.app.state
    rows = state.store.index.query("SELECT study_uid FROM studies ORDER BY last_received DESC LIMIT ?",
                                   (RECENT_STUDIES,))
    studies = []
    for row in rows:
        try:
            studies.append(_study_view(request, status_api.get_study(row["study_uid"], request)))
        except NotFound:
            continue  # removed between the two reads
    jobs = getattr(state, "jobs", None)
    models = getattr(getattr(state, "models", None), "entries", {})
    return _page(request, "index.html", studies=studies, counts=jobs.counts() if jobs is not None else {},
                 models=[{"id": k, "loaded": e.loaded, "version": e.metadata.version if e.metadata else None,
                          "error": e.error} for k, e in sorted(models.items())])


@router.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
def study(request: Request, study_instance_uid: str, rerun: int | None = Query(None)) -> Response:
    if (early := _guard(request)) is not None:
        return early
    try:
        view = _study_view(request, status_api.get_study(study_instance_uid, request))
    except NeuroNovaError as exc:
        return _page(request, "error.html", status_code=exc.http_status, message=exc.message)
    pipelines = sorted(getattr(request.app.state, "pipelines", None) or {})
    settled = view["stable"] and all(j["state"] in ("done", "failed") for j in view["jobs"])
    return _page(request, "study.html", study=view, rerun=rerun, pipelines=pipelines,
                 refresh=IDLE_REFRESH_SECONDS if settled else REFRESH_SECONDS)


@router.post("/studies/{study_instance_uid}/reprocess")
def reprocess(request: Request, study_instance_uid: str, csrf: str = Form(""), pipeline: str = Form("")) -> Response:
    try:
        claims = session.check_form(request, csrf)
        body = status_api.ReprocessIn(pipeline=pipeline or None)
        out = status_api.reprocess(study_instance_uid, request, body)
    except NeuroNovaError as exc:
        return _page(request, "error.html", status_code=exc.http_status, message=exc.message)
    log.info("status page: %s asked a re-run (%s): %d job(s) queued", claims.sub, pipeline or "all pipelines",
             len(out["jobs"]))
    return RedirectResponse(f"/ui/studies/{study_instance_uid}?rerun={len(out['jobs'])}", status_code=303)


@router.get("/instances/{sop_instance_uid}/thumbnail.png")
def thumbnail(request: Request, sop_instance_uid: str) -> Response:
    if session.current_claims(request) is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    if not is_valid_uid(sop_instance_uid):
        return Response(status_code=400, headers=SECURITY_HEADERS)
    path = request.app.state.store.path_of(sop_instance_uid)
    if path is None or not path.is_file():
        return Response(status_code=404, headers=SECURITY_HEADERS)
    try:
        png = thumbnail_png(path)
    except Exception as exc:  # an instance that does not render: the page shows its alt text
        log.warning("thumbnail of a stored instance failed: %s", type(exc).__name__)
        return Response(status_code=422, headers=SECURITY_HEADERS)
    return Response(png, media_type="image/png",
                    headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=300"})


def _study_view(request: Request, status: dict[str, Any]) -> dict[str, Any]:
    """The status API's study, arranged for the page: series by UID, jobs with their series and thumbnails."""
    series = {s["series_instance_uid"]: s for s in status["series"]}
    row = request.app.state.store.index.study(status["study_instance_uid"])
    jobs = []
    for job in status["jobs"]:
        source = series.get(job["series_instance_uid"], {})
        results: dict[str, int] = {}
        for r in job["results"]:
            kind = RESULT_KINDS.get(r["sop_class_uid"], "other")
            results[kind] = results.get(kind, 0) + 1
        jobs.append({**job, "series_number": source.get("series_number"),
                     "series_description": source.get("series_description"),
                     "result_counts": results,
                     "thumbnails": [r["sop_instance_uid"] for r in job["results"]
                                    if r["sop_class_uid"] == SC_SOP_CLASS],
                     "timings": (job.get("summary") or {}).get("timings") or {}})
    states: dict[str, int] = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    return {**status, "jobs": jobs, "job_states": states,
            "study_description": row["study_description"] if row is not None else None,
            "study_date": row["study_date"] if row is not None else None,
            "modalities": sorted({s["modality"] for s in status["series"] if s["modality"]})}
