"""The registry: the service's store of applications, models, links, replicas and uploads.

``async with Registry.open(path) as registry:`` (or ``registry = await Registry.open(path)``
then ``await registry.close()``). Its methods come from its parts, each a module:
:mod:`proxy.registry.apps` (applications, links), :mod:`proxy.registry.models` (versions, current
version, stopping), :mod:`proxy.registry.replicas`, :mod:`proxy.registry.routes` (policies, the
prediction log), :mod:`proxy.registry.uploads`, :mod:`proxy.registry.fit_jobs` and
:mod:`proxy.registry.schedules`.

The file is SQLite in WAL mode with foreign keys on and a busy timeout, so several proxies, or
a proxy and a CLI, may share it. Opening applies the pending migrations of
:mod:`proxy.registry.schema`
in one transaction and refuses a file from a newer modelbus. Every method is one transaction —
all that a single Clipper call changes commits whole or not at all — and writers take the
write lock up front (``BEGIN IMMEDIATE``), so a check and the write it guards cannot race
another connection. Rows read back are validated into the frozen records of
:mod:`proxy.registry.records`.

``Registry.open("postgresql://…")`` keeps the registry in PostgreSQL instead, through
:class:`proxy.registry.postgres.PostgresDatabase`: the same stores, the same contract, for
several proxies sharing one registry.

This is the only module that imports aiosqlite. SQLite errors leave it as :class:`Overloaded`
(the file stayed locked past the busy timeout), :class:`LimitExceeded` (its disk is full:
:mod:`proxy.registry.space`) or :class:`InternalError`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from bus.errors import BusError, Conflict, InternalError, Overloaded
from proxy.registry.apps import AppStore
from proxy.registry.fit_jobs import FitJobStore
from proxy.registry.models import ModelStore
from proxy.registry.postgres import PostgresDatabase, is_postgres_url
from proxy.registry.replicas import ReplicaStore
from proxy.registry.routes import RouteStore
from proxy.registry.schedules import ScheduleStore
from proxy.registry.schema import MIGRATIONS, SCHEMA_VERSION
from proxy.registry.space import disk_full, is_disk_full
from proxy.registry.sql import Clock, Database, Params, Row
from proxy.registry.uploads import UploadStore

__all__ = ["Registry"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

_MIN_SQLITE = (3, 37, 0)  # STRICT tables
_JSON_COLUMNS = frozenset({"labels", "metadata"})
_CLEANUP_S = 5.0


class _Store(Database, Protocol):
    """A :class:`Database` the registry owns: SQLite's ``_Database`` or ``PostgresDatabase``."""

    @property
    def path(self) -> Path | str: ...

    async def schema_version(self) -> int: ...

    async def watch(
        self, on_change: Callable[[str | None], None], *, task_status: TaskStatus[None]
    ) -> None: ...

    async def lead(self, name: str, run: Callable[[], Awaitable[None]]) -> None: ...

    async def close(self) -> None: ...


class Registry(
    AppStore, ModelStore, ReplicaStore, RouteStore, UploadStore, FitJobStore, ScheduleStore
):
    """The registry over one SQLite file; make one with :meth:`open`."""

    _db: _Store

    def __init__(self, db: _Store) -> None:
        self._db = db
        self.path = db.path

    @classmethod
    def open(
        cls, path: str | PathLike[str], *, busy_timeout_s: float = 5.0, clock: Clock = time.time_ns
    ) -> _Opening:
        """Open the file (or a ``postgresql://`` database), creating or migrating it; await the
        result or ``async with`` it.

        ``busy_timeout_s`` bounds how long a write waits for another connection's; ``clock``
        (ns since the epoch) stamps ``created_ns``/``touched_ns``/``updated_ns``.
        """
        if is_postgres_url(path):
            url = str(path)
            return _Opening(lambda: cls._connect_postgres(url, busy_timeout_s, clock))
        return _Opening(lambda: cls._connect(Path(path), busy_timeout_s, clock))

    @classmethod
    async def _connect_postgres(cls, url: str, busy_timeout_s: float, clock: Clock) -> Registry:
        db = await PostgresDatabase.connect(url, busy_timeout_s=busy_timeout_s, clock=clock)
        return cls(db)

    @classmethod
    async def _connect(cls, path: Path, busy_timeout_s: float, clock: Clock) -> Registry:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise InternalError(f"the registry needs SQLite >= 3.37, not {sqlite3.sqlite_version}")
        try:
            connection = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise _translate(exc, path) from exc
        connection.row_factory = sqlite3.Row
        db = _Database(connection, path, clock)
        try:
            await db.configure(busy_timeout_s)
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def schema_version(self) -> int:
        """The file's ``PRAGMA user_version`` (the database's ``modelbus_schema``)."""
        return await self._db.schema_version()

    async def watch_current(
        self,
        on_change: Callable[[str | None], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled, call ``on_change(name)`` when another connection (another proxy)
        changes model ``name``'s current versions (``None``: maybe any). PostgreSQL tells;
        a SQLite file cannot, so on SQLite this only waits (one machine, one proxy)."""
        await self._db.watch(on_change, task_status=task_status)

    async def lead(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` while this proxy holds the lead ``name`` among the proxies sharing
        this registry, waiting for it first; if the lead is lost, ``run()`` is cancelled and
        the lead awaited again. On PostgreSQL the lead is a session advisory lock on a
        connection of its own (a dead proxy's connection ends, and its lead with it); a
        SQLite file has one proxy, which leads at once."""
        await self._db.lead(name, run)

    async def close(self) -> None:
        """Close the file; idempotent. A transaction under way finishes first."""
        await self._db.close()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Database:
    """One aiosqlite connection: transactions one at a time, and the SQL inside them.

    It is both :class:`proxy.registry.sql.Database` and the :class:`proxy.registry.sql.Session` it
    yields.
    """

    def __init__(self, connection: aiosqlite.Connection, path: Path, clock: Clock) -> None:
        self._connection = connection
        self.path = path
        self.clock = clock
        self._lock = anyio.Lock()
        self._closed = False

    async def configure(self, busy_timeout_s: float) -> None:
        async with self._translated():
            await self.exec("PRAGMA foreign_keys = ON")
            mode = await self._journal_mode_wal(anyio.current_time() + busy_timeout_s)
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives
            # the process crashing; an OS crash may lose the last commits but never corrupts.
            await self.exec("PRAGMA synchronous = NORMAL")
        if mode != "wal":
            raise InternalError(f"registry {self.path} cannot use WAL (journal mode {mode})")

    async def _journal_mode_wal(self, deadline: float) -> object:
        # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once
        # rather than calling the busy handler: retry while another connection switches it.
        while True:
            try:
                row = await self.row("PRAGMA journal_mode")
                if row is not None and row[0] != "wal":
                    row = await self.row("PRAGMA journal_mode = WAL")
                return None if row is None else row[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or anyio.current_time() >= deadline:
                    raise
            await anyio.sleep(0.02)

    async def migrate(self) -> None:
        async with self.write():
            row = await self.row("PRAGMA user_version")
            found = 0 if row is None else int(row[0])
            if found > SCHEMA_VERSION:
                raise Conflict(
                    f"registry {self.path} has schema version {found}, newer than the "
                    f"{SCHEMA_VERSION} this modelbus knows: upgrade modelbus, or give it "
                    "another data directory",
                    path=str(self.path),
                    file_version=found,
                    supported_version=SCHEMA_VERSION,
                )
            for statements in MIGRATIONS[found:]:
                for statement in statements:
                    await self.exec(statement)
            if found < SCHEMA_VERSION:
                await self.exec(f"PRAGMA user_version = {SCHEMA_VERSION}")
                log.info("registry %s: schema version %d -> %d", self.path, found, SCHEMA_VERSION)

    async def schema_version(self) -> int:
        async with self.read() as session:
            row = await session.row("PRAGMA user_version")
        return 0 if row is None else int(row[0])

    async def watch(
        self,
        on_change: Callable[[str | None], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()  # SQLite announces nothing to other connections
        await anyio.sleep_forever()

    async def lead(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        await run()  # one SQLite file, one proxy: it leads

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(_CLEANUP_S, shield=True):
            async with self._lock:
                await self._connection.close()

    def read(self) -> AbstractAsyncContextManager[_Database]:
        return self._transaction("BEGIN")

    def write(self) -> AbstractAsyncContextManager[_Database]:
        return self._transaction("BEGIN IMMEDIATE")

    @asynccontextmanager
    async def _transaction(self, begin: str) -> AsyncIterator[_Database]:
        if self._closed:
            raise InternalError(f"registry {self.path} is closed", path=str(self.path))
        async with self._lock, self._translated():
            try:
                await self.exec(begin)
                yield self
                await self.exec("COMMIT")
            except BaseException:
                # Shielded: a cancelled caller must not leave the transaction open. The
                # ROLLBACK fails only when none is open (BEGIN failed, or COMMIT went through).
                with anyio.move_on_after(_CLEANUP_S, shield=True), suppress(sqlite3.Error):
                    await self.exec("ROLLBACK")
                raise

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    async def rows(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return list(await self._connection.execute_fetchall(sql, params))

    async def row(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.rows(sql, params)
        return rows[0] if rows else None

    async def exec(self, sql: str, params: Params = ()) -> int:
        async with self._connection.execute(sql, params) as cursor:
            return cursor.rowcount

    async def exec_many(self, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        async with self._connection.executemany(sql, rows) as cursor:
            return cursor.rowcount

    def load(self, cls: type[R], row: Row) -> R:
        data = {key: row[key] for key in row.keys()}  # noqa: SIM118 (a Row iterates values)
        try:
            for key in _JSON_COLUMNS.intersection(data):
                data[key] = json.loads(data[key])
            return cls.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError
            raise InternalError(
                f"registry {self.path}: a stored {cls.__name__} is invalid; was the file "
                f"written by another program? ({exc})",
                path=str(self.path),
            ) from exc


class _Opening:
    """What :meth:`Registry.open` returns: awaitable, and an async context manager."""

    def __init__(self, connect: Callable[[], Coroutine[Any, Any, Registry]]) -> None:
        self._connect = connect
        self._registry: Registry | None = None

    def __await__(self) -> Generator[Any, None, Registry]:
        return self._connect().__await__()

    async def __aenter__(self) -> Registry:
        self._registry = await self._connect()
        return self._registry

    async def __aexit__(self, *exc_info: object) -> None:
        if self._registry is not None:
            await self._registry.close()


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _translate(exc: sqlite3.Error, path: Path) -> BusError:
    text = str(exc)
    if _is_busy(exc):
        return Overloaded(
            f"registry {path} stayed locked by another writer past the busy timeout; retry",
            path=str(path),
        )
    if is_disk_full(exc):
        return disk_full(path, what=f"writing to the registry {path}")
    return InternalError(f"registry {path}: {type(exc).__name__}: {text}", path=str(path))
