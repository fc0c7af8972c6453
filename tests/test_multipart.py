"""The streaming multipart reader (neuronova/multipart.py) on its own: parts and their headers whatever the
chunking, the limits, the clean-up of a part left open, and the documented 4xx errors of malformed bodies."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from neuronova.errors import InvalidRequest, NeuroNovaError, PayloadTooLarge, UnsupportedMediaType
from neuronova.multipart import Limits, MultipartReader, PartHeaders, boundary, read_multipart

B = b"nn-test-boundary"
RELATED = 'multipart/related; type="application/dicom"; boundary=' + B.decode()


def body(*parts: tuple[list[bytes], bytes], close: bool = True) -> bytes:
    out = b""
    for headers, payload in parts:
        out += b"--" + B + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload + b"\r\n"
    return out + (b"--" + B + b"--\r\n" if close else b"")


class Sink:
    """Records what the reader does to it."""

    def __init__(self, log: list[Sink], headers: PartHeaders, *, fail_write_at: int | None = None,
                 fail_end: bool = False) -> None:
        self.headers, self.data, self.events = headers, bytearray(), []
        self.fail_write_at, self.fail_end = fail_write_at, fail_end
        log.append(self)

    def write(self, data: memoryview) -> None:
        assert isinstance(data, memoryview)
        self.data += data
        if self.fail_write_at is not None and len(self.data) >= self.fail_write_at:
            raise InvalidRequest("the sink refuses this part")

    def end(self) -> None:
        self.events.append("end")
        if self.fail_end:
            raise InvalidRequest("refused at its end")

    def abort(self) -> None:
        self.events.append("abort")


def collector(**kw: object) -> tuple[list[Sink], object]:
    sinks: list[Sink] = []
    return sinks, lambda headers: Sink(sinks, headers, **kw)  # type: ignore[arg-type]


def feed(data: bytes, cuts: list[int], **kw: object) -> list[Sink]:
    sinks, begin = collector()
    reader = MultipartReader(B, begin, **kw)  # type: ignore[arg-type]
    points = sorted({0, len(data), *cuts})
    for a, b in zip(points, points[1:]):
        reader.feed(data[a:b])
    reader.finish()
    return sinks


# --- parts and headers ------------------------------------------------------------------------------------------

PAYLOAD_1 = b"\x00\x01DICM" + b"\r\n--" + B[:5] + b"not a boundary\r" + bytes(range(256))
PAYLOAD_2 = b"second\r\n\r\n--" + B + b"X" + b"tail"  # a boundary followed by other than CRLF or "--" is data
TWO = body(([b"Content-Type: application/dicom", b'Content-Disposition: form-data; name="image"; '
             b'filename="caf\xc3\xa9.dcm"'], PAYLOAD_1),
           ([b"Content-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1", b"X-Other: a",
             b"x-other: b", b"Content-Empty: "], PAYLOAD_2))


def _check_two(sinks: list[Sink]) -> None:
    assert [bytes(s.data) for s in sinks] == [PAYLOAD_1, PAYLOAD_2]
    assert [s.events for s in sinks] == [["end"], ["end"]]
    first, second = sinks[0].headers, sinks[1].headers
    assert (first.index, first.media_type, first.disposition, first.name, first.filename) == (
        0, "application/dicom", "form-data", "image", "café.dcm")
    assert second.index == 1 and second.media_type == "application/dicom"
    assert second.media_params == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    assert second.get("X-Other") == "a, b"  # a repeated header's values, joined
    assert second.get("content-empty") is None  # an empty value counts as absent
    assert second.name is None and second.filename is None and second.disposition == ""


def test_parts_and_headers_in_one_chunk() -> None:
    _check_two(feed(TWO, []))


def test_every_split_into_two_and_three_chunks_gives_the_same_parts() -> None:
    for cut in range(len(TWO) + 1):
        _check_two(feed(TWO, [cut]))
    for cut in range(0, len(TWO), 7):  # boundaries, header lines and CRLFs cut everywhere
        for second in range(cut, len(TWO), 13):
            _check_two(feed(TWO, [cut, second]))


def test_byte_by_byte() -> None:
    _check_two(feed(TWO, list(range(len(TWO)))))


def test_leading_crlf_epilogue_and_an_empty_body() -> None:
    sinks = feed(b"\r\n" + TWO + b"epilogue, ignored", [])
    _check_two(sinks)
    assert feed(b"--" + B + b"--", []) == []


def test_begin_may_drop_a_part() -> None:
    reader = MultipartReader(B, lambda headers: None)
    reader.feed(TWO)
    reader.finish()
    assert reader.parts == 2 and reader.ended


# --- limits -----------------------------------------------------------------------------------------------------

def test_a_part_over_its_limit_is_413_and_its_sink_is_aborted() -> None:
    sinks, begin = collector()
    reader = MultipartReader(B, begin, max_part_bytes=len(PAYLOAD_1) - 1, note=" (note)")
    with pytest.raises(PayloadTooLarge, match=r"limit of \d+ bytes \(note\)") as info:
        for i in range(0, len(TWO), 16):
            reader.feed(TWO[i:i + 16])
    assert info.value.http_status == 413
    assert sinks[0].events == ["abort"]
    assert len(sinks[0].data) <= len(PAYLOAD_1) - 1  # the crossing bytes never reached the sink
    assert PAYLOAD_1.startswith(bytes(sinks[0].data))


def test_exactly_at_the_part_limit_passes() -> None:
    _check_two(feed(TWO, [5, 50], max_part_bytes=max(len(PAYLOAD_1), len(PAYLOAD_2))))


def test_more_parts_than_allowed_is_400() -> None:
    feed(TWO, [], max_parts=2)
    with pytest.raises(InvalidRequest, match="more than 1 parts") as info:
        feed(TWO, [], max_parts=1)
    assert info.value.http_status == 400


def _request(content_type: str | None, chunks: list[bytes], *, content_length: int | None = None,
             disconnect: bool = False) -> tuple[Request, list[int]]:
    headers = [] if content_type is None else [(b"content-type", content_type.encode("latin-1"))]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "root_path": "", "scheme": "http", "query_string": b"",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1), "headers": headers,
             "app": SimpleNamespace(state=SimpleNamespace())}
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if not disconnect:
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    read: list[int] = []  # how many chunks the reader asked for

    async def receive() -> dict[str, object]:
        read.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request(scope, receive), read


def _read(request: Request, begin: object, *, limit: int = 1 << 20, in_thread: bool = False,
          **kw: object) -> int:
    return asyncio.run(read_multipart(request, begin, media_type="multipart/related",  # type: ignore[arg-type]
                                      limits=Limits(body=limit), in_thread=in_thread, **kw))


@pytest.mark.parametrize("in_thread", [False, True])
def test_read_multipart_from_a_request(in_thread: bool) -> None:
    sinks, begin = collector()
    request, _ = _request(RELATED, [TWO[:40], TWO[40:41], TWO[41:]])
    assert _read(request, begin, in_thread=in_thread, part_type="application/dicom") == 2
    _check_two(sinks)


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    sinks, begin = collector()
    request, read = _request(RELATED, [TWO], content_length=len(TWO))
    with pytest.raises(PayloadTooLarge, match="declares") as info:
        _read(request, begin, limit=len(TWO) - 1)
    assert info.value.http_status == 413 and info.value.code == "IMAGE_TOO_LARGE"
    assert read == [] and sinks == []
    request, _ = _request(RELATED, [TWO], content_length=len(TWO))
    assert _read(request, begin, limit=len(TWO)) == 2  # at the limit: read


def test_a_body_growing_past_the_limit_is_refused_at_the_crossing_chunk() -> None:
    sinks, begin = collector()
    pieces = [TWO[i:i + 32] for i in range(0, len(TWO), 32)]
    request, read = _request(RELATED, pieces)  # no Content-Length: chunked
    limit = TWO.index(PAYLOAD_1) + 40  # in the first part's data
    with pytest.raises(PayloadTooLarge, match="exceeds"):
        _read(request, begin, limit=limit)
    assert len(read) == limit // 32 + 1  # the chunks within the limit, then the one that crosses it; no more
    assert [s.events for s in sinks] == [["abort"]]  # the part being read when the limit struck


# --- a part left open is cleaned up ------------------------------------------------------------------------------

def test_a_body_cut_mid_part_is_400_and_aborts_the_open_sink() -> None:
    cut = TWO.index(PAYLOAD_2) + 5
    sinks, begin = collector()
    request, _ = _request(RELATED, [TWO[:cut]])
    with pytest.raises(InvalidRequest, match="ends before the closing boundary"):
        _read(request, begin)
    assert [s.events for s in sinks] == [["end"], ["abort"]]


def test_a_body_cut_mid_headers_is_400_with_nothing_open() -> None:
    sinks, begin = collector()
    reader = MultipartReader(B, begin)
    reader.feed(TWO[:TWO.index(b"X-Other")])
    with pytest.raises(InvalidRequest):
        reader.finish()
    assert [s.events for s in sinks] == [["end"]]


def test_a_sink_error_leaves_as_it_is_and_aborts_the_sink() -> None:
    sinks, begin = collector(fail_write_at=10)
    reader = MultipartReader(B, begin)
    with pytest.raises(InvalidRequest, match="the sink refuses this part"):
        reader.feed(TWO)
    assert [s.events for s in sinks] == [["abort"]]
    assert sinks[0].data.startswith(PAYLOAD_1[:10])
    sinks, begin = collector(fail_end=True)
    reader = MultipartReader(B, begin)
    with pytest.raises(InvalidRequest, match="refused at its end"):
        reader.feed(TWO)
    assert [s.events for s in sinks] == [["end", "abort"]]


def test_a_sink_error_keeps_its_cause() -> None:
    def begin(headers: PartHeaders) -> Sink:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise NeuroNovaError("no space left in the data directory", http_status=507) from exc

    reader = MultipartReader(B, begin)
    with pytest.raises(NeuroNovaError) as info:
        reader.feed(TWO)
    assert info.value.http_status == 507 and isinstance(info.value.__cause__, OSError)


def test_a_parse_error_in_a_later_part_is_400() -> None:
    sinks, begin = collector()
    second = b"\r\n--" + B + b"\r\nContent-Type: Application"
    bad = TWO.replace(second, second.replace(b"Content", b"\x00Content"))  # not a header name
    request, _ = _request(RELATED, [bad[:30], bad[30:]])
    with pytest.raises(InvalidRequest, match="malformed multipart body") as info:
        _read(request, begin)
    assert info.value.http_status == 400
    assert [s.events for s in sinks] == [["end"]]  # the first part was complete; the second never began


def test_a_client_that_goes_away_is_400_and_aborts_the_sink() -> None:
    sinks, begin = collector()
    request, _ = _request(RELATED, [TWO[:TWO.index(PAYLOAD_1) + 3]], disconnect=True)
    with pytest.raises(InvalidRequest, match="went away"):
        _read(request, begin)
    assert [s.events for s in sinks] == [["abort"]]


# --- malformed bodies and Content-Types ---------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"no boundary at all",
    b"--other-boundary\r\n\r\nx\r\n--other-boundary--",
    b"--" + B + b"X\r\n\r\nx\r\n--" + B + b"--",  # no CRLF after the opening boundary
    b"--" + B + b"\r\nno colon in this header\r\n\r\nx\r\n--" + B + b"--",
    b"--" + B + b"\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(20)) + b"\r\nx\r\n--" + B + b"--",
    b"--" + B + b"\r\nX: " + b"v" * 10_000 + b"\r\n\r\nx\r\n--" + B + b"--",
    b"--" + B + b"\r\n\r\nx\r\n--" + B + b"-",  # half a closing delimiter
    b"",
])
def test_malformed_bodies_are_400(data: bytes) -> None:
    sinks, begin = collector()
    request, _ = _request(RELATED, [data[i:i + 7] for i in range(0, len(data), 7)])
    with pytest.raises(InvalidRequest) as info:
        _read(request, begin)
    assert info.value.http_status == 400 and info.value.code == "INVALID_REQUEST"
    assert all(s.events in (["end"], ["abort"]) for s in sinks)


@pytest.mark.parametrize(("content_type", "error", "status"), [
    (None, UnsupportedMediaType, 415),
    ("application/dicom", UnsupportedMediaType, 415),
    ("multipart/form-data; boundary=x", UnsupportedMediaType, 415),
    ('multipart/related; type="application/dicom+json"; boundary=x', UnsupportedMediaType, 415),
    ('multipart/related; type="application/dicom"', InvalidRequest, 400),
    ("multipart/related; boundary=", InvalidRequest, 400),
    ('multipart/related; boundary="', InvalidRequest, 400),
    ('multipart/related; boundary=""', InvalidRequest, 400),
    ("multipart/related; boundary=" + "b" * 71, InvalidRequest, 400),
    ("multipart/related; boundary=" + "b" * 300, InvalidRequest, 400),  # python-multipart's own limit: 256
    ('multipart/related; boundary="ends with a space "', InvalidRequest, 400),
    ("multipart/related; boundary=caf\xe9", InvalidRequest, 400),
    ("multipart/related; boundary=a\x01b", InvalidRequest, 400),
])
def test_content_type_errors(content_type: str | None, error: type[NeuroNovaError], status: int) -> None:
    sinks, begin = collector()
    request, read = _request(content_type, [TWO])
    with pytest.raises(error) as info:
        _read(request, begin, part_type="application/dicom")
    assert type(info.value) is error and info.value.http_status == status
    assert read == [] and sinks == []


def test_boundary() -> None:
    assert boundary(RELATED, "multipart/related", part_type="application/dicom") == B
    assert boundary('Multipart/Related; boundary="a b:c"', "multipart/related") == b"a b:c"
    assert boundary("multipart/related; boundary=" + "b" * 70, "multipart/related") == b"b" * 70
    assert boundary("multipart/related; boundary=x", "multipart/related", part_type="application/dicom") == b"x"
    with pytest.raises(InvalidRequest) as info:  # a route that answers 400 for another media type
        boundary("text/plain", "multipart/form-data", wrong_media=InvalidRequest)
    assert info.value.http_status == 400
