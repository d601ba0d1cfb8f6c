"""Fixtures for the container manager's tests: a real service in a thread of its own, on Mosquitto.

clipper_admin is synchronous, and so are these tests: the service runs on an event loop in a
background thread (a blocking portal), and the container manager runs its own loop in another.
One service serves a whole test module; tests keep apart by naming their own apps and models.

Entities: the operator holds C*P on the whole service; the viewer holds P on ``slot/predict``
only, plus C on the service's ``!meta`` (so it can see that the service is alive).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from bus import Entity, Grant, encode_chain
from container_manager import BusContainerManager
from proxy.backend.sandbox import SandboxLimits
from proxy.service.settings import ProxySettings
from proxy.service.startup import load_or_create_entity, run_proxy
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.podman import find_podman

DAY_NS = 86_400 * 10**9
ROOT = Path(__file__).resolve().parents[2]


def import_clipper_admin() -> ModuleType:
    """clipper_admin 0.4.1, unchanged. Compiled from source (no .pyc yet) it warns about its
    own code — ``"is" with a literal``, ``invalid escape sequence`` — which would fail the run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r'"is" with a literal', SyntaxWarning)
        warnings.filterwarnings("ignore", r"invalid escape sequence", DeprecationWarning)
        import clipper_admin
    return clipper_admin


def saved_image_tarball(path: Path, reference: str, size: int = 300_000) -> Path:
    """A file shaped like a ``docker save`` tarball (a manifest naming ``reference``)."""
    with tarfile.open(path, "w") as archive:
        for name, data in (
            ("manifest.json", json.dumps([{"RepoTags": [reference], "Layers": []}]).encode()),
            ("layer.tar", bytes(size)),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


@dataclass
class RunningService:
    """A running proxy, who may talk to it, and how to make container managers for them."""

    bus_url: str
    owner: Entity
    data_dir: Path
    gates: Path
    """A directory the service's sandboxed models see (read-only): tests' gate files go there."""
    operator: Entity = field(default_factory=lambda: Entity.generate(comment="operator"))
    viewer: Entity = field(default_factory=lambda: Entity.generate(comment="viewer"))

    @property
    def service_uri(self) -> str:
        return f"{self.owner.key_text}/s.modelbus/_"

    def slot(self, name: str) -> str:
        return f"{self.service_uri}/i.modelbus/slot/{name}"

    def grant(self, to: Entity, pattern: str, permissions: str) -> Grant:
        now = time.time_ns()
        return Grant.create(
            self.owner,
            to.public_key,
            pattern,
            permissions,
            ttl=0,
            expires_ns=now + DAY_NS,
            created_ns=now - 1,
        )

    def operator_proofs(self) -> list[list[Grant]]:
        return [[self.grant(self.operator, f"{self.service_uri}/*", "C*P")]]

    def viewer_proofs(self) -> list[list[Grant]]:
        return [
            [self.grant(self.viewer, self.slot("predict"), "P")],
            [self.grant(self.viewer, f"{self.service_uri}/!meta/*", "C*")],
        ]

    def manager(
        self, entity: Entity | None = None, proofs: Any = None, **options: Any
    ) -> BusContainerManager:
        """A container manager as ``entity`` (the operator by default)."""
        if entity is None:
            entity, proofs = self.operator, self.operator_proofs()
        return BusContainerManager(self.bus_url, entity, proofs or [], self.service_uri, **options)

    def write_identity(self, directory: Path, who: str) -> tuple[Path, list[Path]]:
        """``who``'s entity file and grant chain files (for the command line)."""
        entity = self.operator if who == "operator" else self.viewer
        proofs = self.operator_proofs() if who == "operator" else self.viewer_proofs()
        key = directory / f"{who}.key"
        if not key.exists():
            entity.save(key)
        chains = []
        for index, chain in enumerate(proofs):
            path = directory / f"{who}-{index}.grant"
            path.write_bytes(encode_chain(chain))
            chains.append(path)
        return key, chains


@contextmanager
def running_service(bus_url: str, data_dir: Path, **settings: Any) -> Iterator[RunningService]:
    """A modelbus service in a thread of its own while the context is open."""
    gates = data_dir.with_name(f"{data_dir.name}-gates")
    gates.mkdir(parents=True, exist_ok=True)
    gates.chmod(0o755)
    settings.setdefault("sandbox_limits", SandboxLimits(shared_dirs=(gates,)))
    config = ProxySettings(
        bus_url=bus_url, embed_bus=False, data_dir=data_dir, heartbeat_interval_s=1.0, **settings
    )
    with start_blocking_portal(backend="asyncio") as portal:
        running, info = portal.start_task(run_proxy, config)
        try:
            owner = load_or_create_entity(config)
            assert info.service_uri == f"{owner.key_text}/s.modelbus/_"
            yield RunningService(bus_url, owner, data_dir, gates)
        finally:
            running.cancel()


@pytest.fixture(scope="module")
def service(
    mosquitto: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """One modelbus service on Mosquitto for a test module (closures only: no engine)."""
    mosquitto.start()
    with running_service(mosquitto.url, tmp_path_factory.mktemp("service")) as running:
        yield running


@pytest.fixture(scope="session")
def clipper_base_image(docker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """What clipper_admin's deployers build FROM: the modelbus base image (deploy/base-image,
    built unless the engine has it) labelled with Clipper's model layout, /model/func.pkl.
    ClipperConnection.build_model keeps its build containers (docker-py's ``rm=False``); they
    are removed afterwards."""
    podman = find_podman()
    context = tmp_path_factory.mktemp("base-image")
    rootfs = ROOT / "deploy" / "base-image" / "rootfs.py"
    made = subprocess.run(
        [sys.executable, str(rootfs), str(context)], capture_output=True, text=True, check=True
    )
    base = made.stdout.strip()
    if subprocess.run([podman, "image", "exists", base], check=False).returncode != 0:
        subprocess.run([podman, "build", "-t", base, str(context)], check=True, capture_output=True)
    layered = context / "clipper"
    layered.mkdir()
    (layered / "Dockerfile").write_text(
        f'FROM {base}\nLABEL modelbus.entry="function:/model/func.pkl"\n'
    )
    tag = f"localhost/modelbus-clipper-base:{base.rpartition(':')[2]}"
    subprocess.run([podman, "build", "-t", tag, str(layered)], check=True, capture_output=True)
    yield tag
    listed = subprocess.run(
        [podman, "ps", "--all", "--external", "--quiet", "--filter", f"ancestor={tag}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if leftovers := listed.stdout.split():
        subprocess.run([podman, "rm", "--force", *leftovers], capture_output=True, check=False)
