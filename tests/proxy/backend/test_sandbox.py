"""Untrusted model code in a real bubblewrap sandbox, deployed through a running service.

The escaping model tries what a white-box review did to the unsandboxed service: read the
service's key (the namespace root, in these tests), its registry, another model's artifact, the
service's environment through ``/proc``; write outside its temp directory; connect to the bus's
port. It reports what happened as its output, so the test asserts on what it observed — and it
still predicts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from bus.errors import SandboxUnavailable
from proxy.backend.sandbox import Sandbox, SandboxLimits
from proxy.service import running_proxy
from tests.proxy.conftest import ProxyHarness

SECRET = "hunter2-service-secret"


def double(inputs: list[list[float]]) -> list[float]:
    return [2 * row[0] for row in inputs]


def escaper(targets: dict[str, str], service_pid: int, bus_port: int) -> Callable[..., Any]:
    """A model that tries to get out, and says how each attempt went."""

    def escape(inputs: list[list[float]]) -> list[dict[str, Any]]:
        import os
        import socket

        seen: dict[str, str] = {}

        def attempt(name: str, action: Callable[[], object]) -> None:
            try:
                action()
                seen[name] = "ok"
            except OSError as exc:
                seen[name] = f"{type(exc).__name__} errno {exc.errno}"

        def read(path: str) -> Callable[[], bytes]:
            def run() -> bytes:
                with open(path, "rb") as file:
                    return file.read()

            return run

        def write(path: str) -> Callable[[], int]:
            def run() -> int:
                with open(path, "wb") as file:
                    return file.write(b"owned")

            return run

        for name, path in targets.items():
            attempt(f"read {name}", read(path))
        attempt("read ../../proxy.key", read("../../proxy.key"))
        attempt("read parent environ", read(f"/proc/{os.getppid()}/environ"))
        attempt("read service environ", read(f"/proc/{service_pid}/environ"))
        attempt("write data dir", write(os.path.join(os.path.dirname(targets["key"]), "owned")))
        attempt("write /usr", write("/usr/owned"))
        attempt("write /opt/modelbus", write("/opt/modelbus/proxy/owned.py"))
        attempt("write own artifact", write("/model/artifact"))
        attempt("write /tmp", write("/tmp/scratch"))
        attempt("connect bus", lambda: socket.create_connection(("127.0.0.1", bus_port), 2))
        facts = {
            "uid": str(os.getuid()),
            "environ": " ".join(sorted(os.environ)),
            "secret seen": str(any(SECRET in value for value in os.environ.values())),
        }
        return [{"output": 2 * row[0], **seen, **facts} for row in inputs]

    return escape


def _host_targets(data_dir: Path) -> dict[str, str]:
    [artifact] = (data_dir / "artifacts").iterdir()
    return {
        "key": str(data_dir / "proxy.key"),
        "registry": str(data_dir / "registry.sqlite3"),
        "other artifact": str(artifact),
    }


async def test_a_deployed_model_cannot_reach_what_is_not_its_own(
    zmq_harness: ProxyHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELBUS_TEST_SECRET", SECRET)  # in the service's environment
    bus_port = urlsplit(zmq_harness.bus_url.replace("zmq://", "tcp://")).port
    assert bus_port is not None
    with anyio.fail_after(120):
        async with zmq_harness.serving() as service:
            operator = service.operator
            await operator.deploy_function("other", "1", double, "doubles")
            await operator.wait_ready("other", "1")
            targets = _host_targets(service.data_dir)
            model = escaper(targets, os.getpid(), bus_port)
            await operator.deploy_function("escape", "1", model, "doubles")
            await operator.wait_ready("escape", "1")
            reply = await operator.predict(model="escape", input=[21.0])
            other = await operator.predict(model="other", input=[1.5])
    seen = reply["output"]
    assert seen["output"] == 42.0  # it still predicts
    assert other["output"] == 3.0
    # Nothing of the host's data directory exists in the sandbox.
    for name in ("key", "registry", "other artifact"):
        assert seen[f"read {name}"] == "FileNotFoundError errno 2", name
    assert seen["read ../../proxy.key"] == "FileNotFoundError errno 2"
    # Its own PID namespace: the service's pid is not there; its parent is the sandbox's init,
    # which belongs to another user.
    assert seen["read service environ"] == "FileNotFoundError errno 2"
    assert seen["read parent environ"] == "PermissionError errno 13"
    # Writes: the data directory is absent (no such dir), the system and code are read-only.
    assert seen["write data dir"] == "FileNotFoundError errno 2"
    assert seen["write /usr"] in ("OSError errno 30", "PermissionError errno 13")
    assert seen["write /opt/modelbus"] in ("OSError errno 30", "PermissionError errno 13")
    assert seen["write own artifact"] in ("OSError errno 30", "PermissionError errno 13")
    assert seen["write /tmp"] == "ok"
    # No network: its own namespace, where nothing listens on the bus's port.
    assert seen["connect bus"] == "ConnectionRefusedError errno 111"
    # An unprivileged user of its own (when the service is root), and a clean environment.
    if os.geteuid() == 0:
        assert seen["uid"] == "65534"
    assert seen["secret seen"] == "False"
    assert "MODELBUS_TEST_SECRET" not in seen["environ"]
    assert set(seen["environ"].split()) <= {
        "HOME",
        "LANG",
        "MODELBUS_REPLICA_TOKEN",
        "PATH",
        "PWD",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "TMPDIR",
    }
    # ... and on the host, nothing was written.
    assert not (Path(targets["key"]).parent / "owned").exists()


def hungry(inputs: list[list[int]]) -> list[str]:
    """Try to allocate ``inputs[0][0]`` MiB; say whether it worked."""
    try:
        block = bytearray(inputs[0][0] * 1024 * 1024)
        return [f"allocated {len(block)}"] * len(inputs)
    except MemoryError:
        return ["MemoryError"] * len(inputs)


def big_file(inputs: list[list[int]]) -> list[str]:
    """Write an ``inputs[0][0]``-MiB file in /tmp; say how far it got (Python ignores SIGXFSZ,
    so a write past RLIMIT_FSIZE fails with EFBIG)."""
    try:
        with open("/tmp/big", "wb") as file:
            for _ in range(inputs[0][0]):
                file.write(b"\0" * 1024 * 1024)
        return ["written"] * len(inputs)
    except OSError as exc:
        return [f"{type(exc).__name__} errno {exc.errno}"] * len(inputs)


async def test_limits_hold_in_the_sandbox(memory_harness: ProxyHarness) -> None:
    limits = SandboxLimits(memory_bytes=768 * 1024 * 1024, file_bytes=4 * 1024 * 1024)
    with anyio.fail_after(120):
        async with memory_harness.serving(sandbox_limits=limits) as service:
            operator = service.operator
            await operator.deploy_function("hungry", "1", hungry, "integers")
            await operator.deploy_function("writer", "1", big_file, "integers")
            await operator.wait_ready("hungry", "1")
            await operator.wait_ready("writer", "1")
            small = await operator.predict(model="hungry", input=[16])
            large = await operator.predict(model="hungry", input=[2048])
            within = await operator.predict(model="writer", input=[2])
            beyond = await operator.predict(model="writer", input=[8])
    assert small["output"] == f"allocated {16 * 1024 * 1024}"
    assert large["output"] == "MemoryError"  # RLIMIT_AS, 768 MiB
    assert within["output"] == "written"
    assert beyond["output"] == "OSError errno 27"  # EFBIG: RLIMIT_FSIZE, 4 MiB


async def test_the_service_refuses_to_start_without_bubblewrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_harness: ProxyHarness
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap to be found
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        async with running_proxy(memory_harness.settings()):
            pass
    with pytest.raises(SandboxUnavailable, match="--unsafe-no-sandbox"):
        Sandbox.detect()


async def test_unsafe_no_sandbox_runs_unconfined_with_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    memory_harness: ProxyHarness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}/nonexistent")
    with anyio.fail_after(60):
        async with memory_harness.serving(unsafe_no_sandbox=True) as service:
            await service.operator.deploy_function("plain", "1", double, "doubles")
            await service.operator.wait_ready("plain", "1")
            reply = await service.operator.predict(model="plain", input=[2.0])
    assert reply["output"] == 4.0
    warnings = [r.getMessage() for r in caplog.records if "UNSAFE" in r.getMessage()]
    assert any("bubblewrap is missing" in w for w in warnings)
    assert any("replica 0 of plain:1 runs without a sandbox" in w for w in warnings)


async def test_the_service_is_private_and_not_dumpable(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        mode = stat.S_IMODE(service.data_dir.stat().st_mode)
        registry_mode = stat.S_IMODE((service.data_dir / "registry.sqlite3").stat().st_mode)
    assert dumpable == 0
    assert mode == 0o700
    assert registry_mode == 0o600
