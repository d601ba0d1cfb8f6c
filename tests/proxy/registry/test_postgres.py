"""The registry on PostgreSQL, where it differs from SQLite: migrations under a lock, the write
lock, the lead (one proxy of several), the schema twin, placeholders, redaction — against the
session's real server (tests/fixtures/postgres.py). The shared contract runs in
test_registry.py over both engines.

Covers proxy/registry/postgres.py and proxy/registry/postgres_schema.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import pytest

from bus.errors import Conflict, InternalError, Overloaded
from proxy.registry import postgres_schema, schema
from proxy.registry.postgres import is_postgres_url, numbered, redact
from proxy.registry.registry import Registry

pytestmark = pytest.mark.postgres

SHA = "a" * 64


@asynccontextmanager
async def raw(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the same database, to look under the registry."""
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def add_model(registry: Registry, version: str = "1") -> None:
    await registry.register_model(
        "thermal",
        version,
        input_type="doubles",
        artifact_kind="closure",
        artifact_sha256=SHA,
        artifact_path=f"/a/{version}",
    )


def test_the_postgres_schema_twins_every_sqlite_migration() -> None:
    """A SQLite migration merged without its PostgreSQL twin fails here."""
    assert postgres_schema.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert len(postgres_schema.MIGRATIONS) == len(schema.MIGRATIONS)


def test_placeholders_are_numbered_outside_quoted_text() -> None:
    assert numbered("SELECT ? , '?' , \"a?\" , ?") == "SELECT $1 , '?' , \"a?\" , $2"
    assert numbered("SELECT 1") == "SELECT 1"


def test_urls_pick_postgres_and_lose_their_password() -> None:
    assert is_postgres_url("postgresql://u@h/db") and is_postgres_url("postgres://h/db")
    assert not is_postgres_url("/data/registry.sqlite3")
    hidden = redact("postgresql://alice:s3cret@db.example:5432/modelbus")
    assert hidden == "postgresql://alice:***@db.example:5432/modelbus"
    assert redact("postgresql://alice@db/x") == "postgresql://alice@db/x"


async def test_proxies_starting_at_once_migrate_once(postgres_url: str) -> None:
    opened: list[Registry] = []

    async def open_one() -> None:
        opened.append(await Registry.open(postgres_url))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(open_one)
        versions = [await registry.schema_version() for registry in opened]
        assert versions == [postgres_schema.SCHEMA_VERSION] * 4
    finally:
        for registry in opened:
            await registry.close()
    async with raw(postgres_url) as connection:
        assert await connection.fetchval("SELECT count(*) FROM modelbus_schema") == 1


async def test_a_database_from_a_newer_modelbus_is_refused_untouched(postgres_url: str) -> None:
    newer = postgres_schema.SCHEMA_VERSION + 1
    async with raw(postgres_url) as connection:
        await connection.execute(postgres_schema.VERSION_TABLE)
        await connection.execute("INSERT INTO modelbus_schema (version) VALUES ($1)", newer)
    with pytest.raises(Conflict, match="newer") as caught:
        await Registry.open(postgres_url)
    assert caught.value.details["file_version"] == newer
    async with raw(postgres_url) as connection:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    assert [row["tablename"] for row in tables] == ["modelbus_schema"]


async def test_a_failing_migration_leaves_the_database_as_it_was(postgres_url: str) -> None:
    async with raw(postgres_url) as connection:
        await connection.execute("CREATE TABLE replicas (x INTEGER)")  # in the way of version 2
    with pytest.raises(InternalError, match="already exists"):
        await Registry.open(postgres_url)
    async with raw(postgres_url) as connection:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    assert [row["tablename"] for row in tables] == ["replicas"]


async def test_a_registered_version_is_immutable_under_the_registry_too(
    postgres_url: str,
) -> None:
    async with Registry.open(postgres_url) as registry:
        await add_model(registry)
    async with raw(postgres_url) as connection:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            await connection.execute("UPDATE models SET artifact_path = '/evil'")
        # What the stores may change, they can.
        assert await connection.execute("UPDATE models SET desired_replicas = 3") == "UPDATE 1"


async def test_a_writer_waits_for_another_writer_and_readers_go_on(postgres_url: str) -> None:
    async with (
        Registry.open(postgres_url, busy_timeout_s=10.0) as registry,
        Registry.open(postgres_url) as other,
    ):
        done = anyio.Event()

        async def write() -> None:
            await registry.register_application("hvac", "doubles", "0", 100)
            done.set()

        async with raw(postgres_url) as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT pg_advisory_xact_lock($1)", 0x6D627772697465)
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                await anyio.sleep(0.3)
                assert not done.is_set()  # waiting for the write lock, not failed
                assert await other.list_applications() == []  # readers are not blocked
                await transaction.commit()
        assert [a.name for a in await other.list_applications()] == ["hvac"]


async def test_a_write_lock_held_past_the_busy_timeout_is_overloaded(postgres_url: str) -> None:
    async with Registry.open(postgres_url, busy_timeout_s=0.1) as registry:
        async with raw(postgres_url) as blocker:
            await blocker.execute("SELECT pg_advisory_lock($1)", 0x6D627772697465)
            with pytest.raises(Overloaded, match="locked"):
                await registry.register_application("hvac", "doubles", "0", 100)
        await registry.register_application("hvac", "doubles", "0", 100)  # usable again
        assert len(await registry.list_applications()) == 1


async def test_an_unreachable_server_is_an_internal_error_without_the_password() -> None:
    from tests.fixtures.ports import free_port

    url = f"postgresql://alice:s3cret@127.0.0.1:{free_port()}/modelbus"
    with pytest.raises(InternalError) as caught:
        await Registry.open(url, busy_timeout_s=1.0)
    assert "s3cret" not in caught.value.message
    assert "s3cret" not in str(caught.value.details)


async def test_names_sort_by_code_point_as_in_sqlite(postgres_url: str) -> None:
    async with Registry.open(postgres_url) as registry:
        for name in ("b", "B", "a", "Z", "a_1", "a-1"):
            await registry.register_application(name, "doubles", "0", 100)
        names = [a.name for a in await registry.list_applications()]
        assert names == ["B", "Z", "a", "a-1", "a_1", "b"]


async def test_another_connections_switches_are_heard_even_after_a_lost_connection(
    postgres_url: str,
) -> None:
    heard: list[str | None] = []
    changed = anyio.Event()

    def on_change(name: str | None) -> None:
        heard.append(name)
        changed.set()

    async def next_change() -> str | None:
        nonlocal changed
        if not heard:
            with anyio.fail_after(10):
                await changed.wait()
        changed = anyio.Event()
        return heard.pop(0)

    async with (
        Registry.open(postgres_url) as listener,
        Registry.open(postgres_url) as writer,
        anyio.create_task_group() as group,
    ):
        await group.start(listener.watch_current, on_change)
        await add_model(writer, "1")
        assert await next_change() == "thermal"
        await add_model(writer, "2")
        assert await next_change() == "thermal"
        await writer.rollback("thermal")
        assert await next_change() == "thermal"

        async with raw(postgres_url) as admin:  # drop the listening connection
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid != pg_backend_pid()"
            )
        assert await next_change() is None  # listening again: anything may have changed
        await writer.set_current("thermal", "2")
        assert await next_change() == "thermal"
        group.cancel_scope.cancel()


async def test_a_sqlite_registry_starts_watching_and_hears_nothing(tmp_path: Path) -> None:
    async with Registry.open(tmp_path / "r.db") as registry, anyio.create_task_group() as group:
        await group.start(registry.watch_current, lambda name: None)
        group.cancel_scope.cancel()


async def test_one_proxy_leads_and_the_lead_passes_on_when_it_goes(postgres_url: str) -> None:
    """Registries waiting for one lead run one at a time; cancelling the leader, or killing
    its lock's connection, hands the lead on; a lead of another name is apart."""
    running: set[str] = set()
    changed = anyio.Event()

    def note(change: Callable[[], None]) -> None:
        nonlocal changed
        change()
        changed.set()
        changed = anyio.Event()

    def work(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            note(lambda: running.add(name))
            try:
                await anyio.sleep_forever()
            finally:
                note(lambda: running.discard(name))

        return run

    async def until(expected: set[str]) -> None:
        with anyio.fail_after(10):
            while running != expected:
                await changed.wait()

    key = int.from_bytes(hashlib.sha256(b"svc slots").digest()[:8], "big", signed=True) % 2**64
    async with (
        Registry.open(postgres_url) as a,
        Registry.open(postgres_url) as b,
        anyio.create_task_group() as group,
    ):
        first = anyio.CancelScope()

        async def lead_a() -> None:
            with first:
                await a.lead("svc slots", work("a"))

        group.start_soon(lead_a)
        await until({"a"})
        group.start_soon(b.lead, "svc slots", work("b"))
        group.start_soon(b.lead, "another svc", work("other"))
        await until({"a", "other"})  # b waits for "svc slots"

        first.cancel()  # a stops: b leads
        await until({"b", "other"})

        group.start_soon(a.lead, "svc slots", work("a again"))
        async with raw(postgres_url) as admin:  # b's lock connection dies: the lead moves on
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = $1 AND objid = $2 AND objsubid = 1"
            )
            with anyio.fail_after(10):  # a waits in line first (PostgreSQL serves it in order)
                while not await admin.fetchval(waiting, key >> 32, key & 0xFFFFFFFF):  # noqa: ASYNC110
                    await anyio.sleep(0.02)  # another connection's wait cannot be awaited
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND classid = $1 AND objid = $2 AND objsubid = 1",
                key >> 32,
                key & 0xFFFFFFFF,
            )
        await until({"a again", "other"})
        group.cancel_scope.cancel()


async def test_a_sqlite_registry_leads_at_once(tmp_path: Path) -> None:
    ran = anyio.Event()

    async def run() -> None:
        ran.set()

    async with Registry.open(tmp_path / "r.db") as registry:
        with anyio.fail_after(5):
            await registry.lead("svc", run)
    assert ran.is_set()
