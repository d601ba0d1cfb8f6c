"""The broker side of the MQTT transport: its URL (password kept out of every message), TLS.

paho's own log records go to the ``transports.mqtt.paho`` logger, without the error paho 2.2
logs each time its loop runs while the client has no socket.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from bus.errors import TransportError

__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "Broker",
    "paho_logger",
    "parse_url",
    "password_from_environment",
    "redact",
    "tls_context",
]


class SpuriousPahoErrors(logging.Filter):
    """paho 2.2 logs an error each time its loop runs without a socket (closed, reconnecting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_paho_logger = logging.getLogger(f"{__name__}.paho")
_paho_logger.addFilter(SpuriousPahoErrors())


paho_logger = logging.getLogger("transports.mqtt.paho")
paho_logger.addFilter(SpuriousPahoErrors())


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    is_tls: bool
    username: str | None
    password: str | None = field(repr=False)
    safe_url: str


def parse_url(url: str) -> Broker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise TransportError(
            "an MQTT URL looks like mqtt://[user:password@]host[:port]", url=redact(url)
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TransportError("an MQTT URL has no path or query", url=redact(url))
    is_tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if is_tls else 1883)
    except ValueError as exc:
        raise TransportError(f"bad port in {redact(url)}", url=redact(url)) from exc
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = password_from_environment()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = f"{parts.username}@" if parts.username else ""
    safe_url = f"{parts.scheme}://{user}{host}:{port}"
    return Broker(parts.hostname, port, is_tls, username, password, safe_url)


PASSWORD_ENV = "MODELBUS_MQTT_PASSWORD"
PASSWORD_FILE_ENV = "MODELBUS_MQTT_PASSWORD_FILE"


def password_from_environment() -> str | None:
    """The broker password for a URL that names a user but no password, so it need not stand in
    a command line or a banner: ``$MODELBUS_MQTT_PASSWORD_FILE`` (a file's first line) or
    ``$MODELBUS_MQTT_PASSWORD``; None if neither is set."""
    if path := os.environ.get(PASSWORD_FILE_ENV):
        try:
            with open(path, encoding="utf-8") as file:
                return file.readline().rstrip("\r\n")
        except OSError as exc:
            raise TransportError(
                f"cannot read the MQTT password file ${PASSWORD_FILE_ENV} ({path}): {exc.strerror}"
            ) from exc
    return os.environ.get(PASSWORD_ENV)


def redact(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


class HandshakeClosingSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails (a bad certificate): close it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(ca_certs: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """Verify the broker (hostname included) against ``ca_certs`` or the system's CAs."""
    context = ssl.create_default_context(cafile=ca_certs)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    context.sslsocket_class = HandshakeClosingSocket
    return context
