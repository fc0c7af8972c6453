"""multipart/form-data uploads, parsed as they stream in, with the size limit enforced on the way.

FastAPI's ``UploadFile``/``Form`` parameters read the whole body before the route runs, so a 5 GB upload
would be received and spooled before anyone could say 413. Here the body is read by the streaming multipart
reader every upload shares (``neuronova.multipart``): a declared ``Content-Length`` over the limit is refused
before a byte is read, and a body that grows past the limit is refused at the chunk that crosses it; the rest
is never read. This module is the form's side: its parts' sinks and limits.

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

from starlette.requests import Request

from neuronova.errors import InvalidRequest, PayloadTooLarge
from neuronova.multipart import Limits, PartHeaders, PartSink, read_multipart

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


class _Form:
    """The sinks' side: what the parts add up to, and the route's own limits on them."""

    def __init__(self, *, max_file_bytes: int, file_fields: frozenset[str], spool_dir: Path | None,
                 max_files: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.file_fields = file_fields
        self.spool_dir = spool_dir
        self.max_files = max_files
        self.form = FormData()
        self.file_bytes = 0
        self.n_fields = 0

    def begin(self, part: PartHeaders) -> PartSink:
        if part.disposition != "form-data" or part.name is None:
            raise InvalidRequest("every part needs 'Content-Disposition: form-data; name=...'")
        if part.filename is None:
            self.n_fields += 1
            if self.n_fields > MAX_FIELDS:
                raise InvalidRequest(f"more than {MAX_FIELDS} form fields")
            return _TextPart(self, part.name)
        if part.name not in self.file_fields:
            return _FilePart(self, None, None)  # a file under a name this route does not take: counted, not kept
        if len(self.form.files) >= self.max_files:
            raise InvalidRequest(f"more than {self.max_files} files in one request")
        content_type = part.content_type if part.content_type is not None else "application/octet-stream"
        upload = UploadedFile(field=part.name, filename=part.filename[:255], content_type=content_type)
        sink: BinaryIO
        if self.spool_dir is None:
            sink = upload._buffer = io.BytesIO()
        else:
            upload.path = self.spool_dir / f"part-{len(self.form.files):06d}"
            sink = upload.path.open("xb")
        self.form.files.append(upload)
        return _FilePart(self, upload, sink)


class _TextPart:
    """A text field, kept in memory up to MAX_FIELD_BYTES."""

    def __init__(self, form: _Form, name: str) -> None:
        self.form, self.name, self.text = form, name, bytearray()

    def write(self, data: memoryview) -> None:
        if len(self.text) + len(data) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes")
        self.text += data

    def end(self) -> None:
        try:
            value = self.text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"field {self.name!r} is not UTF-8 text") from None
        self.form.form.fields.setdefault(self.name, []).append(value)

    def abort(self) -> None:
        pass


class _FilePart:
    """A file part into memory or its spool file (or, under a name the route does not take, nowhere); every
    file part counts towards ``max_file_bytes``."""

    def __init__(self, form: _Form, upload: UploadedFile | None, sink: BinaryIO | None) -> None:
        self.form, self.upload, self.sink = form, upload, sink

    def write(self, data: memoryview) -> None:
        self.form.file_bytes += len(data)
        if self.form.file_bytes > self.form.max_file_bytes:
            raise PayloadTooLarge(f"the uploaded files exceed the limit of {self.form.max_file_bytes} bytes")
        if self.sink is not None and self.upload is not None:
            self.sink.write(data)
            self.upload.size += len(data)

    def end(self) -> None:
        if self.upload is not None and self.upload.path is not None and self.sink is not None:
            self.sink.close()

    def abort(self) -> None:
        self.end()
        if self.upload is not None and self.upload.path is not None:
            self.upload.path.unlink(missing_ok=True)  # the request fails: half a file is nobody's


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
    form = _Form(max_file_bytes=max_file_bytes, file_fields=frozenset(file_fields), spool_dir=spool_dir,
                 max_files=max_files)
    limits = Limits(body=max_file_bytes + FORM_ALLOWANCE, note=f" (uploads are limited to {max_file_bytes} bytes)")
    # Spooling writes files: then off the event loop.
    await read_multipart(request, form.begin, media_type="multipart/form-data", limits=limits,
                         wrong_media=InvalidRequest, in_thread=spool_dir is not None)
    return form.form
