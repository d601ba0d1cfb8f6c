"""A PostgreSQL server of its own, in a temp dir, on a free loopback port: for the benchmarks
(``modelbus bench registry``) and the tests' fixture (``tests/fixtures/postgres.py``).

Started from the installed server binaries (``initdb``, ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``), never the machine's own server. PostgreSQL refuses to
run as root, so as root the cluster is made and run as the ``postgres`` user (or ``nobody``)
in a directory it owns. Trust authentication on 127.0.0.1 only, no unix socket, locale C.
``fsync=False`` for a throwaway cluster (the tests'); the default keeps the server's own
durability (``fsync``, ``synchronous_commit``), as a benchmark needs. What is missing raises
:class:`PostgresUnavailable`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_postgres_bin"]

_START_TIMEOUT_S = 30.0
_USER = "modelbus"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no unprivileged user to run them as."""


def find_postgres_bin() -> Path:
    """The newest installed server's bin directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("PostgreSQL is not installed: apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; ``url(database)`` for a database in it."""

    def __init__(self, bin_dir: Path, *, fsync: bool = True) -> None:
        self.bin_dir = bin_dir
        self.fsync = fsync
        self._owner = _unprivileged_user() if os.geteuid() == 0 else None
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="modelbus-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "server.log"
        if self._owner is not None:
            os.chown(self.directory, self._owner.pw_uid, self._owner.pw_gid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data), "-U", _USER, "--auth=trust", "--no-locale"),
            *("-E", "UTF8"),
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        options += " -c max_connections=200" + ("" if self.fsync else " -c fsync=off")
        self._run(
            "pg_ctl",
            *("-D", str(self.data), "-l", str(self.log_path), "-o", options),
            *("-w", "-t", str(int(_START_TIMEOUT_S)), "start"),
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
            pass

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER, name)
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        done = subprocess.run(
            command, cwd=self.directory, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}"
            )


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, and no 'postgres' or 'nobody' user to run PostgreSQL as"
    )
