"""The upload limit holds while the body streams (a real server, a raw socket); /health shows the models."""

from __future__ import annotations

import select
import socket
import time

import httpx

BOUNDARY = "nnboundary"


def _head(port: int, token: str, length: int | None) -> bytes:
    lines = ["POST /predict/ct_classification HTTP/1.1", f"Host: 127.0.0.1:{port}",
             f"Authorization: Bearer {token}", f"Content-Type: multipart/form-data; boundary={BOUNDARY}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _read_reply(sock: socket.socket) -> bytes:
    """The whole response: headers, then Content-Length bytes of body."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        data = sock.recv(65536)
        if not data:
            return reply
        reply += data
    head, body = reply.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return head + b"\r\n\r\n" + body


def test_the_limit_is_enforced_while_the_body_streams(make_api, serve) -> None:
    limit = 256 * 1024
    server = serve(make_api(max_upload_bytes=limit))
    port = int(server.url.rsplit(":", 1)[1])
    token = server.api.token()

    # A declared length over the limit is refused before any byte of the body is sent.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(port, token, 10 * 1024**3))
        reply = _read_reply(sock)
        assert _status(reply) == 413 and b"IMAGE_TOO_LARGE" in reply

    # A chunked body (no length declared) is refused at the chunk that crosses the limit: the answer comes
    # while the client still has most of its 20 MB to send.
    chunk = b"\0" * (64 * 1024)
    part_head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.dcm\"\r\n"
                 "Content-Type: application/dicom\r\n\r\n").encode()
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(port, token, None))
        sock.sendall(b"%x\r\n%s\r\n" % (len(part_head), part_head))
        deadline = time.monotonic() + 20
        while sent < 20 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
            readable, _, _ = select.select([sock], [], [], 0.005)
            if readable:
                break
        reply = _read_reply(sock)
    assert _status(reply) == 413 and b"IMAGE_TOO_LARGE" in reply, reply[:200]
    assert sent < 4 * limit, f"the server let {sent} bytes in before refusing"


def test_health_reports_models_devices_and_memory(api, serve) -> None:
    server = serve(api)
    health = httpx.get(server.url + "/health", timeout=10).json()  # no token needed
    assert health["status"] == "healthy" and health["version"]
    assert health["uptime_seconds"] >= 0 and health["memory_usage_mb"] > 0
    for model_id in ("ct_classification", "mri_segmentation", "biomarker_prediction"):
        model = health["models"][model_id]
        assert model["loaded"] is True and model["version"] and model["last_updated"].endswith("Z")
    assert isinstance(health["gpu_available"], bool) and isinstance(health["gpu_devices"], list)
    assert health["gpu_available"] == bool(health["gpu_devices"])
    assert "predict" not in health  # the predict service starts with the first predict request
    biomarkers = {"biomarkers": {"age": 50, "gender": "F", "tumor_markers": {"CEA": 2.0}}}
    assert httpx.post(server.url + "/predict/biomarker_prediction", json=biomarkers, headers=api.headers(),
                      timeout=30).status_code == 200
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["predict"]["tasks"] == {"pending": 0, "running": 0}
    assert health["predict"]["batching"]["max_batch_size"] == api.settings.max_batch_size
    # the OpenAPI document builds and lists the routes with their error responses
    openapi = httpx.get(server.url + "/openapi.json", timeout=10).json()
    route = openapi["paths"]["/predict/ct_classification"]["post"]
    assert {"400", "401", "413", "429", "500", "503"} <= set(route["responses"])
    body_schema = openapi["paths"]["/predict/biomarker_prediction"]["post"]["requestBody"]["content"]
    assert "tumor_markers" in str(body_schema) and "$defs" not in str(body_schema)
