"""One streaming multipart reader for every upload: STOW-RS (multipart/related), the predict API's forms
(multipart/form-data) and the remote workers' results (multipart/related).

The body is fed to python-multipart's ``MultipartParser`` chunk by chunk as ``request.stream()`` delivers it,
and each part goes to a sink its caller supplies: ``begin(headers)`` returns the sink when the part's headers
are complete, then the sink gets ``write(data)`` for each piece of the part and ``end()`` at its closing
boundary, or ``abort()`` when the request fails first. Memory holds one network chunk, never a part or the
request, unless a sink keeps it. STOW-RS and the results route write each part into a store temp file; the
forms keep text fields in memory and file parts in memory or in ``spool_dir``.

Why hand-written glue over python-multipart: its ``FormParser`` (and Starlette's ``request.form()``, built on
it) reads multipart/form-data only, spools files where and as it likes, and applies limits after the fact;
STOW-RS wants multipart/related parts written straight into the store's temp files, and every route wants its
limit enforced at the chunk that crosses it. The byte-level work (boundaries split across chunks, header
framing, the closing delimiter) stays in python-multipart; here are only its callbacks, the part headers, the
limits and the clean-up, written once instead of once per route.

Errors (NeuroNovaError, answered as the API's JSON error):
- a Content-Type of another media type: ``wrong_media`` (UnsupportedMediaType, 415, unless the route answers
  400); no boundary parameter, or one RFC 2046 does not allow (empty, over 70 characters, a control or
  non-ASCII character, a trailing space): InvalidRequest (400);
- a declared Content-Length over ``Limits.body``: PayloadTooLarge (413) before a byte is read; a body that
  grows past it: 413 at the chunk that crosses it (the rest is never read); a part over ``Limits.part``: 413
  before the crossing bytes reach its sink; more than ``Limits.parts`` parts: InvalidRequest (400);
- a body python-multipart cannot parse, one that ends before its closing boundary, a client that goes away
  mid-body: InvalidRequest (400);
- an error raised by ``begin`` or a sink (the route's own limits, a refused part) leaves as it is.
On any error the open sink is aborted before the error leaves: a failed request leaves no temp file. A sink
whose ``end`` raises is aborted too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from neuronova.errors import InvalidRequest, NeuroNovaError, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)

#: RFC 2046 5.1.1: a boundary is 1 to 70 characters and does not end with a space.
MAX_BOUNDARY = 70


class PartSink(Protocol):
    """Where one part's bytes go. ``data`` is valid during the call only (a view of the network chunk).
    ``begin`` may return None instead: the part is read and dropped."""

    def write(self, data: memoryview) -> None: ...

    def end(self) -> None: ...

    def abort(self) -> None: ...


class PartHeaders:
    """One part's headers, as ``begin`` gets them.

    ``raw`` maps lower-case header names to their values as sent (a repeated header's values joined by ", ";
    a header with an empty value counts as absent). The usual ones, parsed: ``content_type`` (the header,
    stripped; None when absent), ``media_type`` (lower case, without parameters) and ``media_params``;
    ``disposition`` ("" when absent), ``name`` and ``filename`` (UTF-8, None when absent).
    """

    __slots__ = ("content_type", "disposition", "filename", "index", "media_params", "media_type", "name", "raw")

    def __init__(self, index: int, raw: dict[bytes, bytes]) -> None:
        self.index = index  #: the part's position in the body, from 0
        self.raw = raw
        ctype = raw.get(b"content-type")
        self.content_type: str | None = None
        self.media_type: str | None = None
        self.media_params: dict[str, str] = {}
        if ctype is not None:
            self.content_type = ctype.decode("latin-1").strip()
            media, params = parse_options_header(ctype)
            self.media_type = media.decode("latin-1")
            self.media_params = {k.decode("latin-1"): v.decode("latin-1") for k, v in params.items()}
        disposition, params = parse_options_header(raw.get(b"content-disposition"))
        self.disposition = disposition.decode("latin-1")
        name, filename = params.get(b"name"), params.get(b"filename")
        self.name = None if name is None else name.decode("utf-8", "replace")
        self.filename = None if filename is None else filename.decode("utf-8", "replace")

    def get(self, name: str) -> str | None:
        value = self.raw.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def __repr__(self) -> str:
        return f"PartHeaders(index={self.index}, raw={self.raw!r})"


@dataclass(frozen=True)
class Limits:
    """What one request may send. ``note`` ends the 413 messages (which limit the client should mind)."""

    body: int  #: bytes of the whole body, declared or streamed (PayloadTooLarge)
    part: int | None = None  #: bytes of any one part (PayloadTooLarge)
    parts: int | None = None  #: parts in one body (InvalidRequest)
    note: str = ""


def boundary(content_type: str, media_type: str, *, part_type: str | None = None,
             wrong_media: type[NeuroNovaError] = UnsupportedMediaType) -> bytes:
    """The boundary of a ``media_type`` body (its ``type`` parameter, when given, must be ``part_type``)."""
    ctype, params = parse_options_header(content_type)
    got = ctype.decode("latin-1")
    if got != media_type:
        wanted = f'{media_type}; type="{part_type}"' if part_type else media_type
        raise wrong_media(f"this route takes {wanted}, got {got or 'no Content-Type'}")
    if part_type is not None:
        sent = params.get(b"type", part_type.encode()).strip(b'"').decode("latin-1")
        if sent.lower() != part_type:
            raise wrong_media(f'only type="{part_type}" parts are accepted, got {sent}')
    value = params.get(b"boundary")
    if not value:
        raise InvalidRequest(f"{media_type} without a boundary parameter")
    value = value.strip(b'"')
    if (not 0 < len(value) <= MAX_BOUNDARY or value.endswith(b" ")
            or any(c < 0x20 or c > 0x7E for c in value)):
        raise InvalidRequest(f"invalid multipart boundary {value[:80]!r}: RFC 2046 allows 1 to {MAX_BOUNDARY} "
                             "printable ASCII characters, not ending with a space")
    return value


class _SinkError(Exception):
    """Carries an error of a callback (a limit here, ``begin``, a sink) out of the parser, told apart from the
    parser's own parse errors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class MultipartReader:
    """The push side: ``feed`` the body's chunks in order, then ``finish``. At most one sink is open."""

    def __init__(self, boundary: bytes, begin: Callable[[PartHeaders], PartSink | None], *,
                 max_part_bytes: int | None = None, max_parts: int | None = None, note: str = "") -> None:
        self._begin = begin
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self._note = note
        self.parts = 0  #: parts begun
        self.ended = False  #: the closing boundary was read
        self._sink: PartSink | None = None
        self._part_bytes = 0
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end, "on_end": self._on_end,
        })

    # --- the parser's callbacks: anything they raise leaves wrapped in _SinkError ------------------------------
    def _on_part_begin(self) -> None:
        self.parts += 1
        self._headers = {}
        if self.max_parts is not None and self.parts > self.max_parts:
            raise _SinkError(InvalidRequest(f"more than {self.max_parts} parts in one body"))

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        key, value = bytes(self._field).lower(), bytes(self._value).rstrip(b" \t")
        self._field.clear()
        self._value.clear()
        if value:
            self._headers[key] = self._headers[key] + b", " + value if key in self._headers else value

    def _on_headers_finished(self) -> None:
        self._part_bytes = 0
        try:
            self._sink = self._begin(PartHeaders(self.parts - 1, self._headers))
        except Exception as exc:
            raise _SinkError(exc) from exc

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if self.max_part_bytes is not None and self._part_bytes > self.max_part_bytes:
            raise _SinkError(PayloadTooLarge(f"a part exceeds the limit of {self.max_part_bytes} bytes{self._note}"))
        if self._sink is not None:
            try:
                self._sink.write(memoryview(data)[start:end])
            except Exception as exc:
                raise _SinkError(exc) from exc

    def _on_part_end(self) -> None:
        if self._sink is not None:
            try:
                self._sink.end()
            except Exception as exc:
                raise _SinkError(exc) from exc  # the sink is still open: abort() cleans it
            self._sink = None

    def _on_end(self) -> None:
        self.ended = True

    # --- the caller's side -----------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk; a sink's error leaves as it is, the parser's as InvalidRequest (400)."""
        error: BaseException | None = None
        try:
            self._parser.write(chunk)
        except _SinkError as wrapped:
            error = wrapped.error  # raised below, out of this block: it keeps its own cause and traceback
        except Exception as exc:  # python-multipart's parse errors
            error = InvalidRequest(f"malformed multipart body: {exc}")
        except BaseException:
            self.abort()
            raise
        if error is not None:
            self.abort()
            raise error

    def finish(self) -> None:
        """The body is over: InvalidRequest (400) unless it reached its closing boundary."""
        if not self.ended:
            self.abort()
            raise InvalidRequest("malformed multipart body: it ends before the closing boundary")

    def abort(self) -> None:
        """Abort the open sink, if any (idempotent); its clean-up failing is logged, not raised."""
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.abort()
            except Exception:
                log.exception("a multipart part's clean-up failed")


def refuse_declared(request: Request, limits: Limits) -> None:
    """PayloadTooLarge (413) when the request's Content-Length is over ``limits.body``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.body:
        raise PayloadTooLarge(f"the request declares {declared} bytes; the limit is {limits.body} bytes{limits.note}")


async def read_multipart(
    request: Request,
    begin: Callable[[PartHeaders], PartSink | None],
    *,
    media_type: str,
    limits: Limits,
    part_type: str | None = None,
    wrong_media: type[NeuroNovaError] = UnsupportedMediaType,
    in_thread: bool = False,
) -> int:
    """Read ``request``'s multipart body, each part into the sink ``begin`` gives for it; return how many parts.

    Checks, in order: the Content-Type (see ``boundary``), the declared Content-Length, then each chunk as it
    arrives (see the module doc for the errors). ``in_thread``: the sinks block (they write files): run the
    parser and the sinks in a worker thread, off the event loop.
    """
    reader = MultipartReader(boundary(request.headers.get("content-type", ""), media_type, part_type=part_type,
                                      wrong_media=wrong_media), begin,
                             max_part_bytes=limits.part, max_parts=limits.parts, note=limits.note)
    refuse_declared(request, limits)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.body:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limits.body} bytes{limits.note}")
            if not chunk:
                continue
            if in_thread:
                await run_in_threadpool(reader.feed, chunk)
            else:
                reader.feed(chunk)
        reader.finish()
    except ClientDisconnect:
        raise InvalidRequest("the client went away before the end of the body") from None
    finally:
        reader.abort()  # nothing is open after finish(); on any error, the part being read
    return reader.parts
