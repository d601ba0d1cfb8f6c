"""The registry's seam over PostgreSQL: :class:`PostgresDatabase`, for several proxies at once.

``Registry.open("postgresql://user@host/db")`` lands here; the stores run unchanged on it. What
SQLite does on its own, this module does by hand:

- **Placeholders**: the stores write ``?``; each statement is renumbered to ``$1, $2, …`` once
  (outside quoted text) and cached.
- **One writer at a time**, as ``BEGIN IMMEDIATE`` gives SQLite: every write transaction first
  takes one transaction-scoped advisory lock (``pg_advisory_xact_lock``), held to its commit, so
  the check a store makes (``SELECT 1 … WHERE name = ?``) and the write it guards cannot race
  another proxy's. Two proxies deploying the same ``(name, version)`` therefore give one winner
  and one :class:`Conflict` from the store's own check; a primary-key violation that got past
  it anyway would be a Conflict too. Waiting longer than ``busy_timeout_s`` for the lock
  (PostgreSQL's ``lock_timeout``) is :class:`Overloaded`, like SQLite's busy timeout.
- **Reads** are ``REPEATABLE READ READ ONLY``: one snapshot for all of a method's statements.
- **Switches heard by every proxy**: :meth:`PostgresDatabase.watch` listens (``LISTEN``, on a
  connection of its own, re-made if it drops) on the channel a trigger notifies at each commit
  that changes a model's current versions, and calls back with the model's name — or with None
  after a reconnection, when some may have been missed.
- **One leader** among the proxies of a service: :meth:`PostgresDatabase.lead` holds a
  session advisory lock (keyed by the SHA-256 of the lead's name) on a connection of its own
  while it runs its work; the others wait on the lock. A proxy that dies closes its connection,
  PostgreSQL releases the lock and the next waiter leads (a machine that vanishes without
  closing it: within ~25 s, by TCP keepalives the lock's connection asks the server for); a
  leader whose connection drops stops its work and waits for the lock again.
- **Migrations** (:mod:`proxy.registry.postgres_schema`) run at open in one transaction under
  another advisory lock: proxies starting together migrate once; the others wait, then find the
  schema current. A database from a newer modelbus is refused untouched.

Connections come from an asyncpg pool (``pool_size`` at most). This is the only module that
imports asyncpg; its errors leave as :class:`Conflict`, :class:`Overloaded` or
:class:`InternalError`. The URL's password never appears in messages (``where`` drops it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel

from bus.errors import BusError, Conflict, InternalError, Overloaded
from proxy.registry.postgres_schema import (
    CURRENT_CHANNEL,
    MIGRATIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
)
from proxy.registry.sql import Clock, Params

__all__ = ["SCHEMES", "PostgresDatabase", "is_postgres_url", "redact"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

SCHEMES = ("postgresql://", "postgres://")
_JSON_COLUMNS = frozenset({"labels", "metadata"})
_CLEANUP_S = 5.0
# Advisory lock keys (64-bit, arbitrary but fixed): "mbwrite" and "mbmigrt" in ASCII.
_WRITE_LOCK = 0x6D627772697465
_MIGRATION_LOCK = 0x6D626D69677274
_BACKLOG = 1000
_RECONNECT_MIN_S = 0.5
_RECONNECT_MAX_S = 10.0
_CONNECT_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# The server drops a lead whose machine vanished (no FIN, no RST) after ~25 s, not the kernel's
# two hours: TCP keepalives every 5 s after 10 s idle, 3 unanswered end the connection.
_LEAD_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unprintable URL>"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as ``$1, $2, …``, leaving quoted text (``'…'``, ``"…"``) alone."""
    out: list[str] = []
    quote: str | None = None
    count = 0
    for char in sql:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "?":
            count += 1
            out.append(f"${count}")
            continue
        out.append(char)
    return "".join(out)


class PostgresDatabase:
    """A pool of connections to one database: the :class:`proxy.registry.sql.Database` seam."""

    def __init__(
        self, pool: asyncpg.Pool, where: str, clock: Clock, url: str = "", timeout_s: float = 10
    ) -> None:
        self._pool = pool
        self._url = url
        self._timeout_s = timeout_s
        self.path = where
        self.clock = clock
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str, *, busy_timeout_s: float, clock: Clock, pool_size: int = 4
    ) -> PostgresDatabase:
        """Connect and migrate; a server that cannot be reached is an :class:`InternalError`."""
        where = redact(url)
        settings = {"lock_timeout": str(max(1, int(busy_timeout_s * 1000))), "TimeZone": "UTC"}
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                server_settings=settings,
                timeout=max(busy_timeout_s, 10.0),
                reset=_end_transaction,
            )
        except _CONNECT_ERRORS as exc:
            raise _translate(exc, where) from exc
        db = cls(pool, where, clock, url, max(busy_timeout_s, 10.0))
        try:
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        return db

    async def migrate(self) -> None:
        async with self._transaction("BEGIN", _MIGRATION_LOCK) as session:
            await session.exec(VERSION_TABLE)
            row = await session.row("SELECT version FROM modelbus_schema")
            found = 0 if row is None else int(row[0])
            if found > SCHEMA_VERSION:
                raise Conflict(
                    f"registry {self.path} has schema version {found}, newer than the "
                    f"{SCHEMA_VERSION} this modelbus knows: upgrade modelbus, or give it "
                    "another database",
                    path=self.path,
                    file_version=found,
                    supported_version=SCHEMA_VERSION,
                )
            for statements in MIGRATIONS[found:]:
                for statement in statements:
                    await session.exec(statement)
            if found < SCHEMA_VERSION:
                await session.exec(
                    "INSERT INTO modelbus_schema (version) VALUES (?) "
                    "ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                    (SCHEMA_VERSION,),
                )
                log.info("registry %s: schema version %d -> %d", self.path, found, SCHEMA_VERSION)

    async def schema_version(self) -> int:
        async with self.read() as session:
            row = await session.row("SELECT version FROM modelbus_schema")
        return 0 if row is None else int(row[0])

    async def watch(
        self,
        on_change: Callable[[str | None], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change(model name)`` after each commit that changes a model's current
        versions (``None``: after a lost connection, any may have); runs until cancelled.

        asyncpg calls its listeners outside any task: they only queue the name, and a task of
        this method's own makes the calls."""
        send, receive = anyio.create_memory_object_stream[str | None](_BACKLOG)
        async with anyio.create_task_group() as group, send, receive:
            group.start_soon(_deliver, receive, on_change)
            await self._listen(send, task_status=task_status)

    async def _listen(
        self, send: MemoryObjectSendStream[str | None], *, task_status: TaskStatus[None]
    ) -> None:
        delay, started = _RECONNECT_MIN_S, False
        while True:
            try:
                connection = await asyncpg.connect(self._url, timeout=self._timeout_s)
            except _CONNECT_ERRORS as exc:
                if not started:
                    raise _translate(exc, self.path) from exc
                log.warning("registry %s: cannot listen again yet: %s", self.path, exc)
                await anyio.sleep(delay)
                delay = min(2 * delay, _RECONNECT_MAX_S)
                continue
            try:
                lost = anyio.Event()
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(
                    CURRENT_CHANNEL, lambda _c, _pid, _channel, name: _offer(send, str(name))
                )
                if started:
                    log.info("registry %s: listening again", self.path)
                    _offer(send, None)
                else:
                    started = True
                    task_status.started()
                delay = _RECONNECT_MIN_S
                await lost.wait()
                log.warning("registry %s: lost the connection it listens on", self.path)
            finally:
                with anyio.move_on_after(_CLEANUP_S, shield=True):
                    await connection.close()

    async def lead(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` while holding the lead ``name`` (module docstring); until ``run()``
        returns or this is cancelled."""
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        delay = _RECONNECT_MIN_S
        while True:
            try:
                connection = await asyncpg.connect(
                    self._url, timeout=self._timeout_s, server_settings=_LEAD_KEEPALIVES
                )
            except _CONNECT_ERRORS as exc:
                log.warning("registry %s: cannot wait for the lead yet: %s", self.path, exc)
                await anyio.sleep(delay)
                delay = min(2 * delay, _RECONNECT_MAX_S)
                continue
            lost = anyio.Event()
            try:
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.execute("SELECT pg_advisory_lock($1)", key)
                log.info("registry %s: this proxy leads %s", self.path, name)
                delay = _RECONNECT_MIN_S
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_when, lost, group.cancel_scope)
                    await run()
                    group.cancel_scope.cancel()
                if not lost.is_set():
                    return
                log.warning("registry %s: lost the lead of %s; waiting for it", self.path, name)
            except _CONNECT_ERRORS as exc:
                log.warning("registry %s: the lead of %s failed: %s", self.path, name, exc)
                await anyio.sleep(delay)
            finally:
                with anyio.move_on_after(_CLEANUP_S, shield=True):
                    await connection.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(_CLEANUP_S, shield=True):
            await self._pool.close()
            return
        self._pool.terminate()

    def read(self) -> AbstractAsyncContextManager[_Session]:
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", None)

    def write(self) -> AbstractAsyncContextManager[_Session]:
        return self._transaction("BEGIN", _WRITE_LOCK)

    @asynccontextmanager
    async def _transaction(self, begin: str, lock: int | None) -> AsyncIterator[_Session]:
        if self._closed:
            raise InternalError(f"registry {self.path} is closed", path=self.path)
        try:
            connection = await self._pool.acquire()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _translate(exc, self.path) from exc
        try:
            async with self._translated():
                session = _Session(connection, self.path, self.clock)
                try:
                    # One round trip: BEGIN and the lock (our own integer constant) as one
                    # simple-protocol query.
                    await connection.execute(
                        begin
                        if lock is None
                        else f"{begin}; SELECT pg_advisory_xact_lock({lock:d})"
                    )
                    yield session
                    await connection.execute("COMMIT")
                except BaseException:
                    # Shielded: a cancelled caller must not leave the transaction open.
                    with (
                        anyio.move_on_after(_CLEANUP_S, shield=True),
                        suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError),
                    ):
                        await connection.execute("ROLLBACK")
                    raise
        finally:
            with anyio.move_on_after(_CLEANUP_S, shield=True):
                await self._pool.release(connection)

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _translate(exc, self.path) from exc


class _Session:
    """SQL on one connection inside an open transaction: the ``Session`` seam."""

    def __init__(self, connection: asyncpg.Connection, where: str, clock: Clock) -> None:
        self._connection = connection
        self._where = where
        self.clock = clock

    async def rows(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        return list(await self._connection.fetch(numbered(sql), *params))

    async def row(self, sql: str, params: Params = ()) -> asyncpg.Record | None:
        return await self._connection.fetchrow(numbered(sql), *params)

    async def exec(self, sql: str, params: Params = ()) -> int:
        status: str = await self._connection.execute(numbered(sql), *params)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def exec_many(self, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        await self._connection.executemany(numbered(sql), rows)
        return len(rows)

    def load(self, cls: type[R], row: asyncpg.Record) -> R:
        data: dict[str, Any] = dict(row.items())
        try:
            for key in _JSON_COLUMNS.intersection(data):
                data[key] = json.loads(data[key])
            return cls.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError
            raise InternalError(
                f"registry {self._where}: a stored {cls.__name__} is invalid; was the "
                f"database written by another program? ({exc})",
                path=self._where,
            ) from exc


async def _end_transaction(connection: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, instead of asyncpg's reset query (a round
    trip each time): transactions hold no session state here — the advisory locks are
    transaction-scoped, nothing is SET or LISTENed on pool connections — so only a transaction
    a cancellation left open needs ending."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _offer(send: MemoryObjectSendStream[str | None], name: str | None) -> None:
    try:
        send.send_nowait(name)
    except anyio.WouldBlock:
        log.warning("registry: %d changes not yet followed: one more is not", _BACKLOG)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass  # the watch has ended


async def _deliver(
    receive: MemoryObjectReceiveStream[str | None], on_change: Callable[[str | None], None]
) -> None:
    async for name in receive:
        on_change(name)


def _translate(exc: BaseException, where: str) -> BusError:
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return Overloaded(
            f"registry {where} stayed locked by another writer past the busy timeout; retry",
            path=where,
        )
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(f"registry {where}: {exc.message}", path=where)
    if isinstance(exc, asyncpg.PostgresError):
        text = f"{type(exc).__name__}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return InternalError(f"registry {where}: {text}", path=where)
