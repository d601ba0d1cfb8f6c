"""The loopback HTTP endpoint: a threaded server on ``127.0.0.1``, for its own user only.

Each request is answered by a thread-safe callable (the container manager hands it to its
event loop), and each is signed on the bus with the user's key — so the endpoint must answer
its user's programs only, never another user of the machine nor a web page in the user's
browser. Every request must pass, in order (the first failure answers and closes):

1. **The user** (``auth="uid"``, where the kernel tells who owns each connection — socket
   diagnostics, as ``ss`` asks, or ``/proc/net/tcp`` on Linux): another user's connection → 403.
2. **The size**: a bad or over-64-MiB ``Content-Length`` → 413, unread.
3. **Host** (DNS rebinding: a page of ``evil.example`` re-pointed at 127.0.0.1 sends its own
   name): exactly one ``Host`` header, ``127.0.0.1:<port>`` or ``localhost:<port>`` → else 421.
4. **Cross-site** requests from a browser: an ``Origin`` other than ``http://127.0.0.1:<port>``
   or ``http://localhost:<port>`` (``null`` included), or a ``Sec-Fetch-Site`` other than
   ``same-origin``/``none`` → 403.
5. **JSON**: a POST whose ``Content-Type`` is not ``application/json`` → 415 (a page can send
   ``text/plain`` cross-site without a CORS preflight, never ``application/json``).
6. **The secret path prefix**, on every platform: the address is ``127.0.0.1:<port>/<token>``
   and a request without the token (a guessed URL) → 404.

Replies go out in one write with TCP_NODELAY (a reply split in two writes waits ~40 ms for the
client's delayed ACK).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["MAX_BODY_BYTES", "HttpReply", "LocalAuth", "LoopbackServer", "Responder", "peer_uid"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
PROC_TCP = Path("/proc/net/tcp")
_NETLINK_SOCK_DIAG = 4


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> HttpReply:
        return cls(status, json.dumps(value, default=_json_default).encode())

    @classmethod
    def text(cls, message: str, status: int = 200) -> HttpReply:
        return cls(status, message.encode(), "text/plain; charset=utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


Responder = Callable[[str, str, bytes], HttpReply]
LocalAuth = Literal["uid", "token"]


def peer_uid(
    client: tuple[str, int], server: tuple[str, int], *, table: Path = PROC_TCP
) -> int | None:
    """The user owning the IPv4 TCP socket ``client`` → ``server`` on this host (Linux): asked of
    the kernel's socket diagnostics (~20 µs), else read from ``table`` (ms: it lists them all)."""
    try:
        return _diag_uid(client, server)
    except OSError:
        return _table_uid(client, server, table)


_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_UID_OFFSET = 16 + 64  # netlink header, then inet_diag_msg up to idiag_uid


def _diag_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """One exact-match SOCK_DIAG_BY_FAMILY request (what ``ss`` does), no privileges needed."""
    sockid = (
        struct.pack("!HH", client[1], server[1])
        + socket.inet_aton(client[0]) + bytes(12)
        + socket.inet_aton(server[0]) + bytes(12)
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )  # fmt: skip
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as netlink:
        netlink.settimeout(1.0)
        netlink.sendto(header + request, (0, 0))
        reply = netlink.recv(8192)
    if len(reply) < _UID_OFFSET + 4 or struct.unpack_from("=H", reply, 4)[0] == _NLMSG_ERROR:
        return None
    return int(struct.unpack_from("=I", reply, _UID_OFFSET)[0])


def _table_uid(client: tuple[str, int], server: tuple[str, int], table: Path) -> int | None:
    def hex_address(host: str, port: int) -> str:
        number = int.from_bytes(socket.inet_aton(host), sys.byteorder)
        return f"{number:08X}:{port:04X}"

    local, remote = hex_address(*client), hex_address(*server)
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == local and fields[2] == remote:
            return int(fields[7])
    return None


def default_auth() -> LocalAuth:
    """``uid`` where connections can be attributed to users (Linux), else ``token``."""
    return "uid" if hasattr(os, "getuid") and PROC_TCP.exists() else "token"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: Clipper opens a connection per call
    respond: Responder
    auth: LocalAuth
    token: str

    def allows(self, client: tuple[str, int]) -> bool:
        if self.auth == "token":
            return True  # the path prefix decides alone
        host, port = self.server_address[:2]
        return peer_uid(client, (str(host), int(port))) == os.getuid()

    def route(self, path: str) -> str | None:
        """The path without the token prefix; None if the prefix is missing or wrong."""
        prefix = f"/{self.token}"
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix) :] or "/"
        return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "modelbus-clipper"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffered: the status line, headers and body leave in one write
    is_allowed = False

    def setup(self) -> None:
        super().setup()
        self.is_allowed = self.server.allows(self.client_address[:2])

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        if not self.is_allowed:
            self.close_connection = True
            self._send(HttpReply.text("this endpoint serves only the user who started it", 403))
            return
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(HttpReply.text("bad or too large Content-Length", 413))
            return
        refusal = self._refusal(method)
        if refusal is not None:
            self.close_connection = True
            self._send(refusal)
            return
        body = self.rfile.read(size) if size else b""
        path = self.server.route(urlsplit(self.path).path)
        if path is None:
            self._send(HttpReply.text("not found", 404))
        else:
            self._send(self._respond(method, path, body))

    def _refusal(self, method: str) -> HttpReply | None:
        """Checks 3 to 5 of the module docstring: the reply refusing the request, or None."""
        port = self.server.server_address[1]
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].lower() not in {f"127.0.0.1:{port}", f"localhost:{port}"}:
            return HttpReply.text(f"this endpoint answers only Host 127.0.0.1:{port}", 421)
        origin = self.headers.get("Origin")
        fetch_site = self.headers.get("Sec-Fetch-Site")
        origins = {f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
        if (origin is not None and origin.lower() not in origins) or (
            fetch_site is not None and fetch_site.lower() not in ("same-origin", "none")
        ):
            return HttpReply.text("cross-site requests are refused", 403)
        media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if method == "POST" and media != "application/json":
            return HttpReply.text("a POST carries Content-Type: application/json", 415)
        return None

    def _respond(self, method: str, path: str, body: bytes) -> HttpReply:
        try:
            return self.server.respond(method, path, body)
        except Exception:
            logger.exception("%s %s failed", method, path)
            return HttpReply.text("An unexpected error occurred!", 500)

    def _send(self, reply: HttpReply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class LoopbackServer:
    """Clipper's frontends on ``127.0.0.1:<free port>``, answered by ``respond`` (thread-safe)."""

    def __init__(self, respond: Responder, *, auth: LocalAuth | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.respond = respond
        self._server.auth = auth or default_auth()
        self._server.token = secrets.token_urlsafe(18)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="modelbus-clipper-rest",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>/<token>``: the secret path prefix is part of the address."""
        return f"127.0.0.1:{self._server.server_address[1]}/{self._server.token}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
