"""Fuzz targets: the streaming multipart reader (neuronova/multipart.py) on its own, and its users STOW-RS
(dicomweb/stow.py) and the predict API's uploads (predict/forms.py), fed through a real Starlette request in
chunks as a network delivers them.

Whatever the body and its Content-Type, a reader answers (STOW-RS: a response whose per-instance failures are
in the body) or raises one of the documented errors: a NeuroNovaError with a 4xx HTTP status (400
INVALID_REQUEST, 409, 413 PAYLOAD_TOO_LARGE / IMAGE_TOO_LARGE, 415). Nothing else, and no temporary file left.
The reader itself: every part's sink is ended or aborted exactly once, and a body read whole and the same body
cut anywhere give the same parts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from starlette.requests import Request

from neuronova.config import Settings
from neuronova.dicomweb.stow import _stow
from neuronova.errors import NeuroNovaError
from neuronova.multipart import MultipartReader, PartHeaders
from neuronova.predict.forms import read_form
from neuronova.store import InstanceStore
from tests.fuzz.strategies import FUZZ, FUZZ_SLOW, VALID_PART10, chunks, mutated

BOUNDARY = b"nn-fuzz-0123"


def _request(content_type: bytes, body_chunks: list[bytes], *, max_request_bytes: int) -> Request:
    state = SimpleNamespace(settings=Settings(max_request_bytes=max_request_bytes), on_stored=None)
    scope = {"type": "http", "method": "POST", "path": "/dicomweb/studies", "root_path": "", "scheme": "http",
             "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", content_type)], "app": SimpleNamespace(state=state)}
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in body_chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request(scope, receive)


@st.composite
def parts(draw: st.DrawFn, payloads: st.SearchStrategy[bytes], headers: list[bytes]) -> bytes:
    head = b"".join(h + b"\r\n" for h in draw(st.lists(st.sampled_from(headers), max_size=3)))
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n" + draw(payloads) + b"\r\n"


@st.composite
def bodies(draw: st.DrawFn, payloads: st.SearchStrategy[bytes], headers: list[bytes]) -> tuple[bytes, list[int]]:
    body = b"".join(draw(st.lists(parts(payloads, headers), max_size=3)))
    body += draw(st.sampled_from([b"--" + BOUNDARY + b"--\r\n", b"--" + BOUNDARY + b"--", b"", b"--" + BOUNDARY]))
    if draw(st.integers(0, 3)) == 0:
        body = draw(mutated(body, max_mutations=3))
    return body, draw(st.lists(st.integers(0, 1 << 20), max_size=5))


GOOD_STOW_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
CONTENT_TYPES = st.one_of(
    st.just(GOOD_STOW_TYPE), st.just(GOOD_STOW_TYPE), st.just(b"multipart/related; boundary=" + BOUNDARY),
    st.sampled_from([b'multipart/related; type="image/png"; boundary=' + BOUNDARY,
                     b"multipart/related", b"multipart/form-data; boundary=" + BOUNDARY,
                     b"multipart/related; boundary=", b'multipart/related; boundary="', b"",
                     b"application/dicom"]),
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n")),
)
GOOD_FORM_TYPE = b"multipart/form-data; boundary=" + BOUNDARY
FORM_TYPES = st.one_of(
    st.just(GOOD_FORM_TYPE), st.just(GOOD_FORM_TYPE), st.just(b'multipart/form-data; boundary="' + BOUNDARY + b'"'),
    st.sampled_from([b"multipart/form-data", b"multipart/form-data; boundary=", b"text/plain"]),
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n")),
)
STOW_HEADERS = [b"Content-Type: application/dicom", b"Content-Type: application/dicom",
                b"Content-Type: application/dicom+xml",
                b"Content-Type: ", b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                b"X-Other: 1", b"Content-Length: 12"]
DICOM_PAYLOADS = st.one_of(mutated(VALID_PART10, max_mutations=2), st.just(VALID_PART10), st.binary(max_size=200))


def _check(exc: NeuroNovaError) -> None:
    assert 400 <= exc.http_status < 500, (type(exc).__name__, exc.http_status, exc)
    assert exc.code


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstanceStore]:
    store = InstanceStore(tmp_path_factory.mktemp("fuzz-stow"), duplicate_policy="replace")
    yield store
    store.close()


def _stow_once(store: InstanceStore, content_type: bytes, body: bytes, cuts: list[int], *, limit: int) -> None:
    request = _request(content_type, chunks(body, cuts), max_request_bytes=limit)
    try:
        response = asyncio.run(_stow(request, store, None))
    except NeuroNovaError as exc:
        _check(exc)
        event(f"refused {exc.http_status} {exc.code}")
    else:
        assert response.status_code in (200, 202, 409)
        event(f"answered {response.status_code}")
    assert list((store.root / "tmp").iterdir()) == []


def test_a_well_formed_stow(store: InstanceStore) -> None:
    body = (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + VALID_PART10
            + b"\r\n--" + BOUNDARY + b"--")
    request = _request(GOOD_STOW_TYPE, [body], max_request_bytes=1 << 20)
    assert asyncio.run(_stow(request, store, None)).status_code == 200


@FUZZ
@given(CONTENT_TYPES, bodies(DICOM_PAYLOADS, STOW_HEADERS), st.sampled_from([1 << 20, 1 << 20, 300]))
@example(GOOD_STOW_TYPE, (b"--" + BOUNDARY + b"--", []), 1 << 20)
def test_stow_bodies(store: InstanceStore, content_type: bytes, case: tuple[bytes, list[int]], limit: int) -> None:
    body, cuts = case
    _stow_once(store, content_type, body, cuts, limit=limit)


FORM_HEADERS = [b'Content-Disposition: form-data; name="image"; filename="a.dcm"',
                b'Content-Disposition: form-data; name="images"; filename="../../etc/passwd"',
                b'Content-Disposition: form-data; name="top_k"', b"Content-Disposition: form-data",
                b"Content-Disposition: attachment; name=x", b'Content-Disposition: form-data; name="\xff\xfe"',
                b"Content-Type: application/dicom", b"Content-Type: \xff"]
FORM_PAYLOADS = st.one_of(st.binary(max_size=200), st.text(max_size=40).map(str.encode), st.just(b"\xff\xfe"))


@FUZZ_SLOW
@given(FORM_TYPES, bodies(FORM_PAYLOADS, FORM_HEADERS), st.sampled_from([1 << 20, 100]), st.booleans())
def test_form_bodies(tmp_path: Path, content_type: bytes, case: tuple[bytes, list[int]], limit: int,
                     spool: bool) -> None:
    body, cuts = case
    spool_dir = None
    if spool:
        spool_dir = tmp_path / f"spool-{len(list(tmp_path.iterdir()))}"
        spool_dir.mkdir()
    request = _request(content_type, chunks(body, cuts), max_request_bytes=1 << 20)
    try:
        form = asyncio.run(read_form(request, max_file_bytes=limit, file_fields=("image", "images"),
                                     spool_dir=spool_dir))
    except NeuroNovaError as exc:
        _check(exc)
        event(f"refused {exc.http_status} {exc.code}")
    else:
        event(f"parsed, {len(form.files)} file(s)")
        assert sum(f.size for f in form.files) <= limit
        for f in form.files:  # a client's filename never names a file
            assert f.path is None or f.path.parent == spool_dir


class _Sink:
    def __init__(self, sinks: list[_Sink], headers: PartHeaders) -> None:
        self.headers, self.data, self.events = headers, bytearray(), []
        sinks.append(self)

    def write(self, data: memoryview) -> None:
        assert not self.events, "written after its end"
        self.data += data

    def end(self) -> None:
        self.events.append("end")

    def abort(self) -> None:
        self.events.append("abort")


def _read_parts(body: bytes, cuts: list[int], *, max_part_bytes: int | None) -> tuple[object, list[object]]:
    """What the reader makes of ``body`` cut at ``cuts``: its error's class (or None) and the completed parts."""
    sinks: list[_Sink] = []
    reader = MultipartReader(BOUNDARY, lambda headers: _Sink(sinks, headers), max_part_bytes=max_part_bytes)
    error: type[NeuroNovaError] | None = None
    try:
        for chunk in chunks(body, cuts):
            reader.feed(chunk)
        reader.finish()
    except NeuroNovaError as exc:
        _check(exc)
        error = type(exc)
    reader.abort()
    for sink in sinks:
        assert sink.events in (["end"], ["abort"]), sink.events
    assert error is not None or all(sink.events == ["end"] for sink in sinks)
    done = [(sink.headers.raw, bytes(sink.data)) for sink in sinks if sink.events == ["end"]]
    return error, done


@FUZZ
@given(bodies(st.one_of(DICOM_PAYLOADS, FORM_PAYLOADS), STOW_HEADERS + FORM_HEADERS),
       st.sampled_from([None, None, 50]))
@example((b"\r\nx--" + BOUNDARY + b"\r\n\r\nabc\r\n--" + BOUNDARY + b"--", [2]), None)
def test_reader_parts_do_not_depend_on_the_chunking(case: tuple[bytes, list[int]], max_part_bytes: int | None) -> None:
    body, cuts = case
    whole = _read_parts(body, [], max_part_bytes=max_part_bytes)
    cut = _read_parts(body, cuts, max_part_bytes=max_part_bytes)
    event(f"{whole[0].__name__ if whole[0] else 'read'}, {len(whole[1])} part(s)")  # type: ignore[union-attr]
    if whole[0] is None and cut[0] is None:
        assert cut[1] == whole[1]
    else:
        # An error: the parts completed before it are the same whichever the chunking. Whether there is an error
        # may depend on it: python-multipart skips a preamble after a leading CRLF only within one chunk.
        n = min(len(whole[1]), len(cut[1]))
        assert cut[1][:n] == whole[1][:n]
