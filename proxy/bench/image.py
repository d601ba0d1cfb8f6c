"""``modelbus bench upload --image``: an image deploy over the bus next to ``docker save | docker
load`` on the same engine, in one run, and the memory our two processes need for it.

The engine is ``--docker-url`` (or ``DOCKER_HOST``), else a ``podman system service`` started in
a temporary directory (``default_ulimits = []``, runc, as the tests' fixture). A test image is
built on it ``FROM scratch`` with ``--image-mib`` MiB of random bytes (no compression can cheat)
in layers of up to 128 MiB. Then, with the image removed (untimed) before every load:

- **direct**: ``GET /images/{tag}/get`` streamed into a chunked ``POST /images/load``, no bus.
  The load's last chunk waits until the save has ended and the image is removed (engines buffer
  a load's whole body before loading it: Podman in a temporary file, Docker by untarring it).
- **ours**, per bus (:func:`own_buses`: a ZeroMQ forwarder and, if installed, Mosquitto): the
  client's export (:func:`container_manager.engine.export_image`, streamed to a file), the
  chunked upload to a ``modelbus serve`` process on the same engine, and ``model.deploy`` (kind
  ``image``, no replicas), in which the service checks the tarball and loads it.

Memory: the resident set of this process and of the service (``VmRSS`` from ``/proc/<pid>/
status``, sampled by a thread, and ``VmHWM`` reset through ``clear_refs`` where allowed) as
growth over its size just before the upload; and their CPU seconds. Loopback only.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio
import click

from bus import BusClient, runner
from container_manager import ServiceClient
from container_manager.engine import export_image
from proxy.backend.docker_engine import DockerEngine
from proxy.backend.images import ENTRY_LABEL, MODEL_CLOSURE_PATH
from proxy.bench.bus import own_buses
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["ImageRow", "Usage", "check_docker_url", "print_image_table", "run_image_bench"]

TARGET_RATIO = 2.0  # ours (save + upload + load) within 2x of docker save | docker load
MEMORY_LIMIT_MB = 64.0  # growth of the client's and the service's resident set while uploading
MIB = 1024 * 1024
_LAYER_MIB = 128
_TIMEOUT_S = 900.0  # any one engine call or bus request
_SAMPLE_S = 0.01
_PODMAN_START_S = 30.0
_CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class Usage:
    """Peak resident-set growth (MB) and CPU seconds of our two processes."""

    client_mb: float  # this process, while uploading
    serve_mb: float  # the service, while receiving
    client_cpu_s: float
    serve_cpu_s: float
    serve_load_mb: float  # the service, while checking and loading the tarball

    @property
    def is_flat(self) -> bool:
        return max(self.client_mb, self.serve_mb) < MEMORY_LIMIT_MB


@dataclass(frozen=True, slots=True)
class ImageRow:
    label: str
    save_s: float
    upload_s: float | None  # None: no bus
    load_s: float
    usage: Usage | None = None

    @property
    def total_s(self) -> float:
        return self.save_s + (self.upload_s or 0.0) + self.load_s


@dataclass(frozen=True, slots=True)
class _Setup:
    url: str  # the engine's
    engine: DockerEngine
    tag: str
    id: str
    window: int


def check_docker_url(url: str) -> str:
    """``url`` if it is a unix socket or a loopback ``tcp://``; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path:
        return url
    if parts.scheme in ("tcp", "http") and (parts.hostname or "") in _LOOPBACK:
        return url
    raise ValueError(f"{url}: the bench uses a unix:// engine or a tcp:// one on loopback")


# -- the engine ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _podman_service(directory: Path, notes: list[str]) -> Iterator[str]:
    """``podman system service`` on a socket in ``directory`` until the block ends."""
    binary = shutil.which("podman")
    if binary is None:
        raise click.UsageError("no engine: install podman, or give --docker-url / DOCKER_HOST")
    config, sock = directory / "containers.conf", directory / "podman.sock"
    config.write_text(_CONTAINERS_CONF)
    url = f"unix://{sock}"
    env = {**os.environ, "CONTAINERS_CONF": str(config)}
    with (directory / "podman.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + _PODMAN_START_S
        while not _accepts(sock):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "podman.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"podman system service did not start:\n{tail}")
            time.sleep(0.05)
        notes.append(f"engine: podman system service started by the bench ({url})")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(str(path)) == 0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=_TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return _UnixConnection(parts.path)
    return http.client.HTTPConnection(parts.hostname or "", parts.port or 2375, timeout=_TIMEOUT_S)


def _build_image(engine: DockerEngine, mib: int, workdir: Path) -> tuple[str, str]:
    """A ``FROM scratch`` image holding ``mib`` MiB of random bytes, labelled as a model image."""
    context = workdir / "context"
    context.mkdir()
    lines = ["FROM scratch", f'LABEL {ENTRY_LABEL}="closure:{MODEL_CLOSURE_PATH}"']
    for index, start in enumerate(range(0, mib, _LAYER_MIB)):
        name = f"layer-{index}.bin"
        with (context / name).open("wb") as file:
            for _ in range(min(_LAYER_MIB, mib - start)):
                file.write(os.urandom(MIB))
        lines.append(f"COPY {name} /data/{name}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"localhost/modelbus-bench-image:{secrets.token_hex(6)}"
    image_id = engine.build(context, tag)
    shutil.rmtree(context)
    return tag, image_id


def _remove(setup: _Setup) -> None:
    setup.engine.remove_image(setup.id, force=True)
    if setup.engine.has_image(setup.id):
        raise RuntimeError(f"the engine still has {setup.id} after removing it")


# -- direct: docker save | docker load -----------------------------------------------------------


def _direct(setup: _Setup) -> ImageRow:
    started = time.perf_counter()
    source, sink = _connection(setup.url), _connection(setup.url)
    try:
        source.request("GET", f"/images/{quote(setup.tag, safe='')}/get")
        saved = source.getresponse()
        if saved.status != 200:
            raise RuntimeError(f"save answered {saved.status}: {saved.read(2000)!r}")
        sink.putrequest("POST", "/images/load?quiet=1")
        sink.putheader("Content-Type", "application/x-tar")
        sink.putheader("Transfer-Encoding", "chunked")
        sink.endheaders()
        buffer = memoryview(bytearray(MIB))
        while count := saved.readinto(buffer):
            sink.send(b"%X\r\n" % count)
            sink.send(buffer[:count])
            sink.send(b"\r\n")
        save_s = time.perf_counter() - started
        _remove(setup)  # before the load's body ends: it really loads
        resumed = time.perf_counter()
        sink.send(b"0\r\n\r\n")
        loaded = sink.getresponse()
        answer = loaded.read()
        load_s = time.perf_counter() - resumed
    finally:
        source.close()
        sink.close()
    if loaded.status != 200 or b'"error' in answer:
        raise RuntimeError(f"load answered {loaded.status}: {answer[-2000:]!r}")
    if not setup.engine.has_image(setup.id):
        raise RuntimeError(f"the engine loaded the tarball but shows no {setup.id}")
    return ImageRow("docker save | docker load (no bus)", save_s, None, load_s)


# -- ours: export, upload over the bus, deploy (the service loads) -------------------------------


class _Watch:
    """A process over a phase: its peak resident set in MB (sampled VmRSS, and the kernel's own
    peak VmHWM, reset through clear_refs where this process may) and the CPU seconds it used."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = self._cpu_at_reset = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Watch:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        """Start a phase: the baseline is the current size."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.baseline = self.peak = self._status("VmRSS")
        self._cpu_at_reset = self._cpu_s()

    def growth_mb(self) -> float:
        """Peak over the baseline since :meth:`reset`."""
        hwm = self._status("VmHWM")  # the process's peak; since the reset if clear_refs worked
        peak = max(self.peak, self._status("VmRSS"), hwm if hwm >= self.baseline else 0.0)
        return max(0.0, peak - self.baseline)

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) since :meth:`reset`."""
        return self._cpu_s() - self._cpu_at_reset

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self.peak = max(self.peak, self._status("VmRSS"))

    def _status(self, field: str) -> float:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024 / 1e6
        return 0.0

    def _cpu_s(self) -> float:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0


def _child_pid(marker: str) -> int:
    """The pid of this process's child whose command line holds ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if parent == os.getpid() and marker in (entry / "cmdline").read_text():
                return int(entry.name)
    raise RuntimeError(f"no child process runs with {marker!r}")


async def _ours(label: str, bus_url: str, setup: _Setup, workdir: Path) -> ImageRow:
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    tarball, data_dir = run_dir / "image.tar", run_dir / "data"
    with service_process(bus_url, data_dir) as service:  # on the engine in $DOCKER_HOST
        user, grant = service.user_with_grant()
        async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
            client = ServiceClient(bus, service.service_uri, timeout_s=_TIMEOUT_S)
            started = time.perf_counter()
            await anyio.to_thread.run_sync(
                lambda: export_image(setup.tag, tarball, engine=setup.url, timeout_s=_TIMEOUT_S)
            )
            save_s = time.perf_counter() - started
            await anyio.to_thread.run_sync(_remove, setup)
            with _Watch(os.getpid()) as mine, _Watch(_child_pid(str(data_dir))) as serve:
                started = time.perf_counter()
                artifact = await client.upload_artifact(
                    tarball, name="bench-image", kind="image", window=setup.window
                )
                upload_s = time.perf_counter() - started
                client_mb, serve_mb = mine.growth_mb(), serve.growth_mb()
                client_cpu_s, serve_cpu_s = mine.cpu_s(), serve.cpu_s()
                serve.reset()
                started = time.perf_counter()
                await client.deploy_artifact(
                    "bench-image", "1", "bytes", artifact, kind="image", image=setup.tag, replicas=0
                )
                load_s = time.perf_counter() - started
                usage = Usage(client_mb, serve_mb, client_cpu_s, serve_cpu_s, serve.growth_mb())
    if not await anyio.to_thread.run_sync(setup.engine.has_image, setup.id):
        raise RuntimeError(f"the service deployed the image but the engine shows no {setup.id}")
    # The service loads an untagged copy (a tarball never re-points a tag): tag it again for the
    # next row's export (untimed).
    await anyio.to_thread.run_sync(setup.engine.tag, setup.id, setup.tag)
    return ImageRow(f"modelbus over {label}", save_s, upload_s, load_s, usage)


# -- the run -------------------------------------------------------------------------------------


def run_image_bench(
    mib: int, window: int, docker_url: str | None
) -> tuple[list[ImageRow], list[str], int]:
    """The direct row first, then one row per bus; notes; the tarball's size in bytes."""
    notes: list[str] = []
    rows: list[ImageRow] = []
    with (
        tempfile.TemporaryDirectory(prefix="modelbus-bench-image-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        if docker_url is None:
            (workdir / "podman").mkdir()
            docker_url = stack.enter_context(_podman_service(workdir / "podman", notes))
        stack.callback(_set_environ, "DOCKER_HOST", os.environ.get("DOCKER_HOST"))
        _set_environ("DOCKER_HOST", docker_url)  # the engine `modelbus serve` uses
        engine = DockerEngine(docker_url, timeout_s=_TIMEOUT_S)
        stack.callback(engine.close)
        started = time.perf_counter()
        tag, image_id = _build_image(engine, mib, workdir)
        stack.callback(engine.remove_image, image_id, force=True)
        notes.append(
            f"built {tag} ({mib} MiB of random bytes) in "
            f"{time.perf_counter() - started:.1f} s; removed at the end"
        )
        setup = _Setup(docker_url, engine, tag, image_id, window)
        probe = workdir / "probe.tar"
        export_image(tag, probe, engine=docker_url, timeout_s=_TIMEOUT_S)  # warms up too
        size = probe.stat().st_size
        probe.unlink()
        rows.append(_direct(setup))
        for label, bus_url in stack.enter_context(own_buses(notes)):
            rows.append(runner.run(_ours, label, bus_url, setup, workdir))
    return rows, notes, size


def _set_environ(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def print_image_table(rows: list[ImageRow], notes: list[str], mib: int, size: int) -> None:
    direct = rows[0]
    megabytes = size / 1e6
    click.echo(f"image deploy of {mib} MiB of random bytes ({megabytes:.0f} MB tarball)")
    click.echo(
        f"{'':40} {'save s':>7} {'upload s':>9} {'load s':>7} {'total s':>8} {'MB/s':>6} "
        f"{'vs direct':>10}"
    )
    for row in rows:
        upload = "-" if row.upload_s is None else f"{row.upload_s:.2f}"
        click.echo(
            f"{row.label:40} {row.save_s:7.2f} {upload:>9} {row.load_s:7.2f} {row.total_s:8.2f} "
            f"{megabytes / row.total_s:6.0f} {row.total_s / direct.total_s:9.2f}x"
        )
    click.echo(
        f"\nwhile uploading: peak resident-set growth, MB (limit {MEMORY_LIMIT_MB:.0f}), "
        "and CPU seconds; while loading: the service's growth"
    )
    click.echo(
        f"{'':40} {'client MB':>9} {'serve MB':>9} {'client cpu':>10} {'serve cpu':>9} "
        f"{'load MB':>8}  memory"
    )
    for row in rows:
        if (use := row.usage) is not None:
            click.echo(
                f"{row.label:40} {use.client_mb:9.1f} {use.serve_mb:9.1f} "
                f"{use.client_cpu_s:10.2f} {use.serve_cpu_s:9.2f} {use.serve_load_mb:8.1f}  "
                f"{'flat' if use.is_flat else 'GREW'}"
            )
    verdicts = [
        f"{row.label.removeprefix('modelbus over ')} {row.total_s / direct.total_s:.2f}x "
        f"{'ok' if row.total_s / direct.total_s <= TARGET_RATIO else 'MISSED'}"
        for row in rows[1:]
    ]
    click.echo(f"\ntarget: ours within {TARGET_RATIO:.0f}x of direct: {', '.join(verdicts)}")
    for note in notes:
        click.echo(f"note: {note}")
