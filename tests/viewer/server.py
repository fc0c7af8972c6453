"""OHIF v3's prebuilt viewer and Orthanc's DICOMweb behind one origin, for the viewer tests.

The viewer is static files (``npm pack @ohif/app`` ships a built ``dist/``); app routes such as /viewer
get index.html, ``/app-config.js`` is generated to point the DICOMweb data source at ``/dicom-web`` on
this same origin, and ``/dicom-web/...`` is passed to Orthanc with the browser's Host header, so the
bulk-data URLs Orthanc writes into its metadata come back to this origin too. Hand-written because the
standard library has a static server but no reverse proxy, and one origin avoids CORS altogether.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "content-length", "content-encoding"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def app_config(origin: str) -> str:
    """OHIF's window.config with one DICOMweb data source on this origin (Orthanc's plugin behind it)."""
    root = f"{origin}/dicom-web"
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": False,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "Orthanc (tests)", "name": "orthanc",
                "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
                "qidoSupportsIncludeField": False, "supportsReject": False,
                "imageRendering": "wadors", "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
                "staticWado": False, "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class ViewerServer:
    """Serves ``dist`` and proxies ``/dicom-web`` to ``orthanc_url`` on 127.0.0.1:``port``."""

    def __init__(self, dist: Path, orthanc_url: str, port: int) -> None:
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self._client = httpx.Client(timeout=60)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="viewer-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass  # the browser's console is what the tests read

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = urlsplit(self.path).path
                if path.startswith("/dicom-web/"):
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, app_config(server.origin).encode(), "text/javascript")
                else:
                    self._static(path)

            def _proxy(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Accept-Encoding"] = "identity"
                reply = server._client.get(server.orthanc_url + self.path, headers=headers)
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def _static(self, path: str) -> None:
                target = (server.dist / path.lstrip("/")).resolve()
                if not target.is_relative_to(server.dist) or not target.is_file():
                    target = server.dist / "index.html"  # an app route (/viewer, /segmentation, ...)
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._send(200, target.read_bytes(), kind)

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
