"""Where results go: ``dimse://AE@host:port`` (C-STORE), ``dimses://AE@host:port`` (C-STORE over TLS) or
``http(s)://host:port/dicom-web`` (STOW-RS).

A DICOMweb destination may carry basic auth in the URL (``https://user:pass@host/dicom-web``) or a bearer
token after a ``#token=`` fragment (the fragment is never sent on the wire).

How a re-run's stale results are removed from the destination (see ``removal.py``) is a query parameter:
``?orthanc=http://host:8042`` (the destination is an Orthanc: stale instances are deleted through its REST
API at that URL, which may carry ``user:pass@``), or ``?reject=iocm`` (the destination implements IHE IOCM:
stale instances are withdrawn by a rejection note, ``iocm.py``). Without either, stale instances stay in the
destination (the outbox logs and counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from neuronova.errors import ConfigError

DIMSE_SCHEMES = ("dimse", "dimses")


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
    #: C-STORE over TLS (``dimses://``).
    tls: bool = False
    #: The REST API of the Orthanc behind this destination (no credentials), for removing stale results.
    orthanc_url: str | None = None
    orthanc_username: str | None = None
    orthanc_password: str | None = None
    #: "iocm": stale instances are withdrawn by an IOCM rejection note sent to the destination.
    reject: str | None = None

    @property
    def name(self) -> str:
        """The destination as shown in logs and the status API: no credentials."""
        if self.kind == "dimse":
            return f"{'dimses' if self.tls else 'dimse'}://{self.ae_title}@{self.host}:{self.port}"
        return self.url


def _options(raw: str, query: str, where: str) -> dict[str, str | None]:
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"orthanc", "reject"}
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}; known: orthanc, reject")
    out: dict[str, str | None] = {"orthanc_url": None, "orthanc_username": None, "orthanc_password": None,
                                  "reject": None}
    if "reject" in params:
        if params["reject"][-1] != "iocm":
            raise ConfigError(f"{where}: reject= takes 'iocm' (IHE IOCM rejection notes)")
        out["reject"] = "iocm"
    if "reject" in params and "orthanc" in params:
        raise ConfigError(f"{where}: give orthanc= or reject=iocm, not both")
    if "orthanc" in params:
        rest = urlsplit(params["orthanc"][-1])
        if rest.scheme not in ("http", "https") or not rest.hostname:
            raise ConfigError(f"{where}: orthanc= must be the http(s) URL of Orthanc's REST API")
        netloc = rest.hostname + (f":{rest.port}" if rest.port else "")
        out["orthanc_url"] = urlunsplit((rest.scheme, netloc, rest.path.rstrip("/"), "", ""))
        out["orthanc_username"] = unquote(rest.username) if rest.username else None
        out["orthanc_password"] = unquote(rest.password) if rest.password else None
    return out


def parse_destination(raw: str) -> Destination:
    """Parse one destination; ConfigError names the setting and says what is wrong."""
    parts = urlsplit(raw.strip())
    where = f"NEURONOVA_DESTINATIONS (--destination) {raw!r}"
    if parts.scheme in DIMSE_SCHEMES:
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.username or not parts.hostname or not port:
            raise ConfigError(f"{where}: expected {parts.scheme}://AE_TITLE@host:port")
        ae = unquote(parts.username)
        if not 1 <= len(ae) <= 16 or "\\" in ae:
            raise ConfigError(f"{where}: the AE title must be 1-16 characters")
        return Destination(kind="dimse", raw=raw, ae_title=ae, host=parts.hostname, port=port,
                           tls=parts.scheme == "dimses", **_options(raw, parts.query, where))
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"{where}: no host")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        token = parts.fragment[len("token="):] if parts.fragment.startswith("token=") else None
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return Destination(kind="dicomweb", raw=raw, url=url, host=parts.hostname, port=parts.port or 0,
                           username=unquote(parts.username) if parts.username else None,
                           password=unquote(parts.password) if parts.password else None, token=token,
                           **_options(raw, parts.query, where))
    raise ConfigError(f"{where}: the scheme must be dimse, dimses, http or https")
