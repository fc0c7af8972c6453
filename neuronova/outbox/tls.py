"""TLS contexts of DICOM TLS (PS3.15 B.9, the BCP 195 profiles): for the listener and for ``dimses://``.

BCP 195 (RFC 9325): TLS 1.2 or newer only, no compression, no renegotiation, forward-secret AEAD cipher
suites (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3 suites are all of that kind). A context is built
once at start-up from the settings (``tls_cert``, ``tls_key``, ``tls_ca``); a file that cannot be read or a key
that does not match is a ConfigError naming the setting.

Here rather than under ``scp_listener``: the outbox (a core part) needs the client side, and the listener may
import the core but not the reverse.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from neuronova.errors import ConfigError

if TYPE_CHECKING:
    from neuronova.config import Settings

#: TLS 1.2 suites of BCP 195 (RFC 9325 4.2) in OpenSSL's names; TLS 1.3 suites are OpenSSL's defaults.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"NEURONOVA_TLS_CERT/NEURONOVA_TLS_KEY (--tls-cert/--tls-key): cannot load "
                          f"{cert.name} with its key: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"NEURONOVA_TLS_CA (--tls-ca): cannot load {ca.name}: {exc}") from exc


def server_context(*, cert: Path, key: Path | None = None, ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context: its certificate; with ``ca``, a client certificate signed by it is required."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(*, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> ssl.SSLContext:
    """The sender's context: verifies the peer against ``ca`` (else the system's CAs) and its host name, and
    presents the node's certificate when it has one."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies the peer and its host name
    if ca is not None:
        _load_ca(ctx, ca)
    else:
        ctx.load_default_certs()
    if cert is not None:
        _load_chain(ctx, cert, key)
    return ctx


def listener_context(settings: "Settings") -> ssl.SSLContext | None:
    """The listener's context from the settings; None when no certificate is set (plain DICOM)."""
    if settings.tls_cert is None:
        if settings.tls_key is not None or settings.tls_ca is not None:
            raise ConfigError("NEURONOVA_TLS_KEY/NEURONOVA_TLS_CA (--tls-key/--tls-ca) need NEURONOVA_TLS_CERT "
                              "(--tls-cert)")
        return None
    return server_context(cert=settings.tls_cert, key=settings.tls_key, ca=settings.tls_ca)


def sender_context(settings: "Settings") -> ssl.SSLContext:
    """The client context of ``dimses://`` destinations from the settings."""
    return client_context(cert=settings.tls_cert, key=settings.tls_key, ca=settings.tls_ca)
