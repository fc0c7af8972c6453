"""Where results go: ``dimse://AE@host:port`` (C-STORE) or ``http(s)://host:port/dicom-web`` (STOW-RS).

A DICOMweb destination may carry basic auth in the URL (``https://user:pass@host/dicom-web``) or a bearer
token after a ``#token=`` fragment (the fragment is never sent on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from neuronova.errors import ConfigError


@dataclass(frozen=True)
class Destination:
    kind: str  # "dimse" or "dicomweb"
    raw: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    username: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def name(self) -> str:
        """The destination as shown in logs and the status API: no credentials."""
        if self.kind == "dimse":
            return f"dimse://{self.ae_title}@{self.host}:{self.port}"
        return self.url


def parse_destination(raw: str) -> Destination:
    """Parse one destination; ConfigError names the setting and says what is wrong."""
    parts = urlsplit(raw.strip())
    where = f"NEURONOVA_DESTINATIONS (--destination) {raw!r}"
    if parts.scheme == "dimse":
        if not parts.username or not parts.hostname or not parts.port:
            raise ConfigError(f"{where}: expected dimse://AE_TITLE@host:port")
        ae = unquote(parts.username)
        if not 1 <= len(ae) <= 16 or "\\" in ae:
            raise ConfigError(f"{where}: the AE title must be 1-16 characters")
        return Destination(kind="dimse", raw=raw, ae_title=ae, host=parts.hostname, port=parts.port)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"{where}: no host")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        token = parts.fragment[len("token="):] if parts.fragment.startswith("token=") else None
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return Destination(kind="dicomweb", raw=raw, url=url, host=parts.hostname, port=parts.port or 0,
                           username=unquote(parts.username) if parts.username else None,
                           password=unquote(parts.password) if parts.password else None, token=token)
    raise ConfigError(f"{where}: the scheme must be dimse, http or https")
