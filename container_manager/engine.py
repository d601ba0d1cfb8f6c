"""The user's own container engine, through its Docker Engine API: export an image to a tarball.

Deploying an image the user built (``ClipperConnection.build_model`` builds on their engine)
ships it to the service as a ``docker save`` tarball; this module asks the engine for one with
``GET /images/{name}/get``, streamed to a file, using only the standard library (docker-py
belongs to the service's docker runtime). The engine is found as docker-py finds it:
``DOCKER_HOST`` (``unix:///path`` or ``tcp://host:port``), else Docker's socket, else Podman's
(``podman system service``), rootless then rootful.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from bus.errors import DecodeError, NotFound, TransportError

__all__ = ["engine_url", "export_image", "image_id", "image_references"]

_BLOCK = 1024 * 1024


def engine_url() -> str:
    """The Docker Engine API to use; a TransportError when none is configured or found."""
    if configured := os.environ.get("DOCKER_HOST"):
        return configured
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    for candidate in (
        "/var/run/docker.sock",
        f"{runtime_dir}/podman/podman.sock",
        "/run/podman/podman.sock",
    ):
        if Path(candidate).exists():
            return f"unix://{candidate}"
    raise TransportError(
        "no container engine found: set DOCKER_HOST, start Docker, or run "
        "'podman system service' (Podman's Docker-compatible API)"
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    split = urlsplit(url)
    if split.scheme == "unix":
        return _UnixConnection(split.path, timeout_s)
    if split.scheme in ("tcp", "http") and split.hostname:
        return http.client.HTTPConnection(split.hostname, split.port or 2375, timeout=timeout_s)
    raise TransportError(f"unsupported engine URL {url!r}: use unix:///path or tcp://host:port")


def _get(
    image: str, suffix: str, engine: str | None, timeout_s: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    url = engine or engine_url()
    connection = _connection(url, timeout_s)
    try:
        connection.request("GET", f"/images/{quote(image, safe='')}/{suffix}")
        response = connection.getresponse()
    except OSError as exc:
        connection.close()
        raise TransportError(f"cannot reach the container engine at {url}: {exc}") from exc
    if response.status == 404:
        connection.close()
        raise NotFound(f"your container engine ({url}) has no image {image!r}", image=image)
    if response.status != 200:
        detail = response.read(2000).decode(errors="replace").strip()
        connection.close()
        raise TransportError(
            f"the container engine at {url} answered {response.status} for {image!r}: {detail}",
            status=response.status,
        )
    return connection, response, url


def image_id(image: str, *, engine: str | None = None, timeout_s: float = 30.0) -> str:
    """The engine's ID of ``image`` (``sha256:…``): what a saved tarball of it is keyed by."""
    connection, response, url = _get(image, "json", engine, timeout_s)
    try:
        found: Any = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise TransportError(f"bad answer from the container engine at {url}: {exc}") from exc
    finally:
        connection.close()
    if not isinstance(found, dict) or not isinstance(found.get("Id"), str):
        raise TransportError(f"the container engine at {url} gave no ID for {image!r}")
    return str(found["Id"])


def export_image(
    image: str,
    destination: Path,
    *,
    engine: str | None = None,
    timeout_s: float = 300.0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """``docker save image > destination``, streamed; ``progress`` gets the bytes written."""
    connection, response, url = _get(image, "get", engine, timeout_s)
    written = 0
    try:
        with destination.open("wb") as out:
            while block := response.read(_BLOCK):
                out.write(block)
                written += len(block)
                if progress is not None:
                    progress(written)
    except (OSError, http.client.HTTPException) as exc:
        raise TransportError(f"exporting {image!r} from {url} failed: {exc}") from exc
    finally:
        connection.close()
    return destination


def image_references(tarball: Path) -> list[str]:
    """The image references (``RepoTags``) a ``docker save`` tarball names."""
    try:
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("manifest.json")
            manifest: Any = json.loads(member.read()) if member else None
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise DecodeError(f"{tarball} is not a 'docker save' tarball: {exc}") from exc
    if not isinstance(manifest, list):
        raise DecodeError(f"{tarball} has no image manifest (manifest.json)")
    return [
        tag
        for entry in manifest
        if isinstance(entry, dict)
        for tag in entry.get("RepoTags") or []
        if isinstance(tag, str)
    ]
