"""multipart/form-data uploads, parsed as they stream in, with the size limit enforced on the way.

FastAPI's ``UploadFile``/``Form`` parameters read the whole body before the route runs, so a 5 GB upload
would be received and spooled before anyone could say 413. Here the body is fed chunk by chunk to
python-multipart's parser: a declared ``Content-Length`` over the limit is refused before a byte is read,
and a body that grows past the limit is refused at the chunk that crosses it; the rest is never read.

Limits (one request):
- file parts together: ``max_file_bytes`` (``Settings.max_upload_bytes``, 50 MB by default);
- the whole body: that plus ``FORM_ALLOWANCE`` for the text fields and the multipart framing;
- each text field: ``MAX_FIELD_BYTES``; at most ``max_files`` file parts and ``MAX_FIELDS`` text fields.

A client's filename is kept for messages only; it never names a file here. File parts go to memory, or
with ``spool_dir`` straight to ``spool_dir/part-000000`` ... as they arrive (a DICOM series of 150 files
never sits in memory).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from neuronova.errors import InvalidRequest, NeuroNovaError, PayloadTooLarge

log = logging.getLogger(__name__)

FORM_ALLOWANCE = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
MAX_FILES = 4096


@dataclass
class UploadedFile:
    field: str
    filename: str  #: the client's name, for messages only (never a path here)
    content_type: str
    size: int = 0
    path: Path | None = None  #: where it was spooled, or None when it is in memory
    _buffer: io.BytesIO | None = field(default=None, repr=False)

    def head(self, n: int = 512) -> bytes:
        if self._buffer is not None:
            return self._buffer.getbuffer()[:n].tobytes()
        assert self.path is not None
        with self.path.open("rb") as fh:
            return fh.read(n)

    def read_bytes(self) -> bytes:
        if self._buffer is not None:
            return self._buffer.getvalue()
        assert self.path is not None
        return self.path.read_bytes()


@dataclass
class FormData:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """The one value of a text field (None when absent); INVALID_REQUEST when it is given twice."""
        values = self.fields.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise InvalidRequest(f"field {name!r} was given {len(values)} times; give it once")
        return values[0]

    def files_named(self, names: Iterable[str]) -> list[UploadedFile]:
        wanted = set(names)
        return [f for f in self.files if f.field in wanted]


class _State:
    """The parser's callbacks: one part at a time, into memory or a spool file."""

    def __init__(self, *, max_file_bytes: int, file_fields: frozenset[str], spool_dir: Path | None,
                 max_files: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.file_fields = file_fields
        self.spool_dir = spool_dir
        self.max_files = max_files
        self.form = FormData()
        self.file_bytes = 0
        self.ended = False
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._text: bytearray | None = None
        self._file: UploadedFile | None = None
        self._sink: BinaryIO | None = None
        self._n_fields = 0

    def on_part_begin(self) -> None:
        self._headers, self._name, self._text, self._file, self._sink = {}, "", None, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_field.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self._header_field = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidRequest("every part needs 'Content-Disposition: form-data; name=...'")
        self._name = params[b"name"].decode("utf-8", "replace")
        if b"filename" not in params:
            self._n_fields += 1
            if self._n_fields > MAX_FIELDS:
                raise InvalidRequest(f"more than {MAX_FIELDS} form fields")
            self._text = bytearray()
            return
        if self._name not in self.file_fields:
            return  # a file under a name this route does not take: counted, not kept
        if len(self.form.files) >= self.max_files:
            raise InvalidRequest(f"more than {self.max_files} files in one request")
        content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1").strip()
        upload = UploadedFile(field=self._name, filename=params[b"filename"].decode("utf-8", "replace")[:255],
                              content_type=content_type)
        if self.spool_dir is None:
            upload._buffer = io.BytesIO()
            self._sink = upload._buffer
        else:
            upload.path = self.spool_dir / f"part-{len(self.form.files):06d}"
            self._sink = upload.path.open("xb")
        self._file = upload
        self.form.files.append(upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._text is not None:
            if len(self._text) + n > MAX_FIELD_BYTES:
                raise InvalidRequest(f"field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
            self._text += data[start:end]
            return
        self.file_bytes += n
        if self.file_bytes > self.max_file_bytes:
            raise PayloadTooLarge(f"the uploaded files exceed the limit of {self.max_file_bytes} bytes")
        if self._sink is not None and self._file is not None:
            self._sink.write(memoryview(data)[start:end])
            self._file.size += n

    def on_part_end(self) -> None:
        if self._text is not None:
            try:
                value = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"field {self._name!r} is not UTF-8 text") from None
            self.form.fields.setdefault(self._name, []).append(value)
        self._close_sink()
        self._text, self._file = None, None

    def on_end(self) -> None:
        self.ended = True

    def _close_sink(self) -> None:
        if self._sink is not None and self.spool_dir is not None:
            self._sink.close()
        self._sink = None


async def read_form(
    request: Request,
    *,
    max_file_bytes: int,
    file_fields: Iterable[str],
    spool_dir: Path | None = None,
    max_files: int = MAX_FILES,
) -> FormData:
    """Parse a multipart/form-data body as it arrives (see the module doc for the limits).

    Raises PayloadTooLarge (413 IMAGE_TOO_LARGE) at the first chunk over a limit, InvalidRequest (400) for
    a body that is not well-formed multipart/form-data.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidRequest("this route takes multipart/form-data (with a boundary), got "
                             f"{ctype.decode('latin-1') or 'no Content-Type'}")
    body_limit = max_file_bytes + FORM_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise PayloadTooLarge(f"the request declares {declared} bytes; uploads are limited to {max_file_bytes} bytes")
    state = _State(max_file_bytes=max_file_bytes, file_fields=frozenset(file_fields), spool_dir=spool_dir,
                   max_files=max_files)
    parser = MultipartParser(params[b"boundary"].strip(b'"'), {
        "on_part_begin": state.on_part_begin, "on_part_data": state.on_part_data, "on_part_end": state.on_part_end,
        "on_header_field": state.on_header_field, "on_header_value": state.on_header_value,
        "on_header_end": state.on_header_end, "on_headers_finished": state.on_headers_finished,
        "on_end": state.on_end,
    })
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise PayloadTooLarge(f"the request body exceeds {body_limit} bytes "
                                      f"(uploads are limited to {max_file_bytes} bytes)")
            if not chunk:
                continue
            if spool_dir is None:
                parser.write(chunk)
            else:  # the callbacks write files: off the event loop
                await run_in_threadpool(parser.write, chunk)
    except NeuroNovaError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    finally:
        state._close_sink()
    if not state.ended:
        raise InvalidRequest("malformed multipart body: it ends before the closing boundary")
    return state.form
