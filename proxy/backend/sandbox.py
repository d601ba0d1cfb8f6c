"""The sandbox untrusted model code runs in: bubblewrap command lines built from a typed policy.

A closure deployed to the service is code from whoever holds a deploy grant; its worker (see
:mod:`proxy.backend.worker`) must not reach the service's keys, registry, other tenants' artifacts
or the
network. :class:`Sandbox` wraps the worker's command line in Debian's ``bubblewrap`` (``bwrap``,
the sandbox Flatpak uses), which gives it:

- its own mount namespace showing only the system read-only (``/usr``, ``/lib``, ``/lib64``,
  ``/bin``), the Python installation and its site-packages read-only, modelbus's own ``bus`` and
  ``proxy`` packages read-only under ``/opt/modelbus``, a *copy* of the replica's own artifact
  at ``/model/artifact`` (read-only), the backend's channel directory at ``/run/modelbus``, a
  fresh ``/proc`` and minimal ``/dev``, and a private size-capped tmpfs ``/tmp`` (its working
  directory and ``HOME``) — no data directory, no ``/etc``, no ``/home``, no ``/root``;
- its own PID, IPC, UTS and network namespaces: it sees only its own processes and has no network
  but a loopback device of its own; it reaches the backend only through the unix socket of the
  channel (ZeroMQ ``ipc://``);
- when the service runs as root, an unprivileged user (``nobody``, 65534) with no capabilities and
  ``no_new_privs`` (``setpriv`` inside the sandbox drops to it before the worker starts); when the
  service runs as another user, that user inside a user namespace (bubblewrap's unprivileged mode,
  which needs unprivileged user namespaces);
- resource limits (:class:`SandboxLimits`, set with ``prlimit`` inside the sandbox): address space,
  CPU seconds, processes (``RLIMIT_NPROC`` counts per user: every sandboxed replica of a root
  service runs as ``nobody`` and shares it), and the size of a file it writes (its log included);
- ``--die-with-parent``: the sandbox is killed when the service dies;
- an environment holding only what the worker needs (its start token, ``PYTHONPATH``, ``PATH``,
  ``HOME=/tmp``).

:func:`make_undumpable` keeps other processes of the service's user from reading its memory and
``/proc/<pid>/environ``. Where bubblewrap is missing, :meth:`Sandbox.detect` raises
:class:`~bus.errors.SandboxUnavailable`: the service refuses to run closures unless the operator
opted out (``--unsafe-no-sandbox``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from bus.errors import SandboxUnavailable

__all__ = [
    "NOBODY",
    "SANDBOX_ARTIFACT",
    "SANDBOX_CHANNEL_DIR",
    "SANDBOX_PACKAGES",
    "Sandbox",
    "SandboxLimits",
    "admit_channel",
    "make_undumpable",
]

logger = logging.getLogger(__name__)

NOBODY = 65534
SANDBOX_CHANNEL_DIR = PurePosixPath("/run/modelbus")
SANDBOX_ARTIFACT = PurePosixPath("/model/artifact")
SANDBOX_PACKAGES = PurePosixPath("/opt/modelbus")
INSTALL_HINT = "apt-get install bubblewrap"

_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
_PACKAGES = ("bus", "proxy")  # what ``python -m proxy.backend.worker`` imports of ours
_PROBE_TIMEOUT_S = 10.0
_PR_SET_DUMPABLE = 4
_MIB = 1024 * 1024


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed replica (0: no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_bytes: Annotated[int, Field(ge=0)] = 4096 * _MIB
    """RLIMIT_AS: the worker's address space."""
    cpu_s: Annotated[int, Field(ge=0)] = 24 * 3600
    """RLIMIT_CPU: CPU seconds; past it the worker is killed and the service starts another."""
    processes: Annotated[int, Field(ge=0)] = 512
    """RLIMIT_NPROC: processes and threads of the sandbox's user (shared, see the module doc)."""
    file_bytes: Annotated[int, Field(ge=0)] = 64 * _MIB
    """RLIMIT_FSIZE: the largest file the worker may write, its log file included."""
    tmp_bytes: Annotated[int, Field(gt=0)] = 64 * _MIB
    """The size of the private ``/tmp`` (memory)."""
    cpus: Annotated[float, Field(gt=0)] = 1.0
    """CPUs an image replica's container may use (the engine's ``--cpus``)."""
    shared_dirs: tuple[Path, ...] = ()
    """Host directories every sandboxed closure replica sees read-only, at the same path
    (reference data its models read; none by default). They must be readable by the sandbox's
    user. Not given to image replicas."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How to run a worker in bubblewrap; build one with :meth:`detect`."""

    bwrap: str
    prlimit: str
    setpriv: str | None  # set when the service is root: the sandbox drops to ``uid``
    uid: int | None
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    python_dirs: tuple[Path, ...] = ()  # bound read-only at the same place
    package_dirs: tuple[Path, ...] = ()  # bound read-only under SANDBOX_PACKAGES

    @classmethod
    def detect(cls, limits: SandboxLimits | None = None, *, probe: bool = True) -> Sandbox:
        """The sandbox for this machine; SandboxUnavailable if it cannot run one.

        Finds ``bwrap`` (and util-linux's ``prlimit``, and ``setpriv`` when running as root),
        then, with ``probe``, runs ``/bin/true`` in a sandbox to prove the kernel allows it.
        """
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable(
                f"bubblewrap (bwrap) is not installed, so model code cannot be sandboxed; "
                f"install it ({INSTALL_HINT}) or, only if every deployer is trusted, start the "
                "service with --unsafe-no-sandbox",
                missing="bwrap",
            )
        is_root = os.geteuid() == 0
        prlimit = _tool("prlimit")
        setpriv = _tool("setpriv") if is_root else None
        root = Path(__file__).resolve().parents[2]  # proxy/backend/sandbox.py -> the checkout
        sandbox = cls(
            bwrap=bwrap,
            prlimit=prlimit,
            setpriv=setpriv,
            uid=NOBODY if is_root else None,
            limits=limits or SandboxLimits(),
            python_dirs=_python_dirs(),
            package_dirs=tuple(root / name for name in _PACKAGES),
        )
        if probe:
            sandbox.probe()
        return sandbox

    def probe(self) -> None:
        """Run ``true`` in a sandbox like a worker's; SandboxUnavailable if that fails."""
        command = [*self._bwrap_args(channel_dir=None, artifact_fd=None), "--", "/bin/true"]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT_S,
                env={"PATH": "/usr/bin:/bin"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap cannot start here: {exc}") from exc
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()[-500:]
            raise SandboxUnavailable(
                f"bubblewrap cannot make a sandbox here ({why}); where the service does not run "
                "as root, bubblewrap needs unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)",
                status=done.returncode,
            )

    def command(
        self, worker: Sequence[str], *, channel_dir: Path | None, artifact_fd: int
    ) -> list[str]:
        """The command line running ``worker`` (a full argv whose paths are the sandbox's:
        :data:`SANDBOX_ARTIFACT`, a socket in :data:`SANDBOX_CHANNEL_DIR`) in the sandbox.

        ``artifact_fd`` is an open descriptor of the replica's artifact, to pass to the child
        (bubblewrap copies it); ``channel_dir`` the directory of the backend's socket (None for
        a one-shot worker that talks through its stdin and stdout: :mod:`proxy.fitting`)."""
        limits = self.limits
        inner: list[str] = []
        if self.setpriv is not None and self.uid is not None:
            inner += [
                self.setpriv,
                f"--reuid={self.uid}",
                f"--regid={self.uid}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        inner += [
            self.prlimit,
            f"--as={_limit(limits.memory_bytes)}",
            f"--cpu={_limit(limits.cpu_s)}",
            f"--nproc={_limit(limits.processes)}",
            f"--fsize={_limit(limits.file_bytes)}",
            "--core=0",
            "--",
        ]
        bwrap = self._bwrap_args(channel_dir=channel_dir, artifact_fd=artifact_fd)
        return [*bwrap, "--", *inner, *worker]

    def environment(self, token_env: str, token: str, extra: Mapping[str, str]) -> dict[str, str]:
        """The worker's whole environment: nothing of the service's own."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(SANDBOX_PACKAGES),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(extra)
        env[token_env] = token
        return env

    def admit(self, channel_dir: Path) -> None:
        """Let the sandbox's user reach the channel: own the directory and the socket in it."""
        if self.uid is not None:
            admit_channel(channel_dir, self.uid)

    def _bwrap_args(self, *, channel_dir: Path | None, artifact_fd: int | None) -> list[str]:
        args = [
            self.bwrap,
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--hostname",
            "modelbus-replica",
        ]
        if self.uid is None:  # not root: bubblewrap's unprivileged mode
            args += ["--unshare-user", "--disable-userns"]
        else:  # root: the sandbox keeps only what setpriv needs to drop to ``uid``
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        for system in _SYSTEM:
            path = Path(system)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), system]
            elif path.is_dir():
                args += ["--ro-bind", system, system]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777", "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp"]
        binds: list[tuple[str, str]] = [(str(p), str(p)) for p in self.python_dirs]
        binds += [(str(p), str(SANDBOX_PACKAGES / p.name)) for p in self.package_dirs]
        binds += [(str(p), str(p)) for p in self.limits.shared_dirs]
        if channel_dir is not None:
            binds.append((str(channel_dir), str(SANDBOX_CHANNEL_DIR)))
        targets = [PurePosixPath(target) for _, target in binds]
        if artifact_fd is not None:
            targets.append(SANDBOX_ARTIFACT)
        for parent in _parents(targets):
            args += ["--perms", "0755", "--dir", str(parent)]
        for source, target in binds:
            args += ["--ro-bind", source, target]
        if artifact_fd is not None:
            args += ["--perms", "0444", "--ro-bind-data", str(artifact_fd), str(SANDBOX_ARTIFACT)]
        args += ["--chdir", "/tmp"]
        return args


def admit_channel(channel_dir: Path, uid: int | None) -> None:
    """Let ``uid`` reach the backend's socket in ``channel_dir``: as root, give it the directory
    and the socket; otherwise (a rootless engine maps ``uid`` to a subordinate id) make the
    socket connectable by all and the directory traversable, not listable."""
    if uid is not None and os.geteuid() == 0:
        for path in (channel_dir, *channel_dir.iterdir()):
            os.chown(path, uid, uid, follow_symlinks=False)
        return
    os.chmod(channel_dir, 0o711)
    for path in channel_dir.iterdir():
        os.chmod(path, 0o666)


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on this process: no core dumps, and other processes of its
    user can neither ptrace it nor read its ``/proc/<pid>/environ`` or memory. False if the
    call is not available (not Linux)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
        return False
    return True


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise SandboxUnavailable(
            f"{name} (util-linux) is not installed; the sandbox needs it: apt-get install "
            "util-linux",
            missing=name,
        )
    return found


def _python_dirs() -> tuple[Path, ...]:
    """The interpreter's installation and every site-packages directory it uses, outside the
    system directories already bound."""
    candidates = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent]
    candidates += [Path(p) for p in site.getsitepackages()]
    if site.ENABLE_USER_SITE and site.USER_SITE:
        candidates.append(Path(site.USER_SITE))
    return _outermost(p.resolve() for p in candidates if p.is_dir())


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    system = [Path(s).resolve() for s in _SYSTEM]
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(other) for other in (*system, *kept)):
            kept.append(path)
    return tuple(kept)


def _parents(targets: Iterable[PurePosixPath]) -> list[PurePosixPath]:
    """Every directory above the targets, outermost first, to create world-traversable (bwrap
    makes missing parents 0700 when it runs as root, which ``nobody`` cannot enter)."""
    parents = {parent for target in targets for parent in target.parents if parent != parent.parent}
    system = {PurePosixPath(s) for s in _SYSTEM}
    return sorted(
        (p for p in parents if not any(p.is_relative_to(s) for s in system)),
        key=lambda p: (len(p.parts), str(p)),
    )


def _limit(value: int) -> str:
    return "unlimited" if value == 0 else str(value)
