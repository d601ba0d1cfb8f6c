"""The registry's contract, over real SQLite files under tmp_path and a real PostgreSQL.

The ``store`` fixture runs each contract test twice: on a SQLite file and on a fresh database of
the session's PostgreSQL server (tests/fixtures/postgres.py). Tests that look under SQLite itself
(WAL, ``PRAGMA user_version``, file locks held by a plain sqlite3 connection) take ``db_path``
and run on SQLite only; their PostgreSQL twins are in tests/proxy/registry/test_postgres.py.

Covers proxy/registry/registry.py and its stores: proxy/registry/apps.py,
proxy/registry/models.py, proxy/registry/replicas.py, proxy/registry/uploads.py,
proxy/registry/sql.py, proxy/registry/schema.py, proxy/registry/records.py.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import Conflict, InternalError, InvalidRequest, LimitExceeded, NotFound, Overloaded
from proxy.registry import models as model_store
from proxy.registry import registry as registry_module
from proxy.registry.records import ModelVersion
from proxy.registry.registry import Registry
from proxy.registry.schema import MIGRATIONS, SCHEMA_VERSION

SHA_A = "a" * 64
SHA_B = "b" * 64


class FakeClock:
    """Nanoseconds that move one tick per reading, or stand where a test puts them."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, db_path: Path) -> str | Path:
    """Where a registry lives: a SQLite file, or a fresh PostgreSQL database's URL."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return db_path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def registry(store: str | Path, clock: FakeClock) -> AsyncIterator[Registry]:
    async with Registry.open(store, clock=clock) as opened:
        yield opened


async def add_model(
    registry: Registry, name: str = "thermal", version: str = "1", **fields: Any
) -> ModelVersion:
    fields.setdefault("input_type", "doubles")
    fields.setdefault("artifact_kind", "closure")
    fields.setdefault("artifact_sha256", SHA_A)
    fields.setdefault("artifact_path", f"/data/artifacts/{name}-{version}")
    return await registry.register_model(name, version, **fields)


async def add_upload(registry: Registry, upload_id: str = "u1", **fields: Any) -> Any:
    fields.setdefault("sender", "alice-key")
    fields.setdefault("name", "thermal-image")
    fields.setdefault("kind", "image")
    fields.setdefault("size", 10)
    fields.setdefault("sha256", SHA_B)
    fields.setdefault("chunk_size", 4)
    fields.setdefault("spool_path", f"/data/spool/{upload_id}")
    return await registry.create_upload(upload_id, **fields)


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the same file, to look under the registry."""
    return sqlite3.connect(path, isolation_level=None)


# -- the file: modes, schema versions, migration, restart -------------------------------------


async def test_a_new_file_is_in_wal_mode_at_the_current_schema(db_path: Path) -> None:
    async with Registry.open(db_path) as registry:
        assert await registry.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    connection = raw(db_path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        connection.close()


async def test_await_open_then_close_twice_and_use_after_close(store: str | Path) -> None:
    registry = await Registry.open(store)
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await registry.close()
    await registry.close()
    with pytest.raises(InternalError, match="closed"):
        await registry.list_applications()


async def test_reopening_the_file_keeps_everything(store: str | Path) -> None:
    async with Registry.open(store) as registry:
        app = await registry.register_application("hvac", "doubles", "0", 100_000, "zone A")
        await add_model(registry, version="1", labels=["thermal"], metadata={"type": "thermal"})
        await add_model(registry, version="2")
        await registry.link_model("hvac", "thermal")
        await registry.rollback("thermal")
        await registry.stop_versions({"thermal": ["2"]})
        replica = await registry.put_replica("thermal", "1", 0, "ready", "4242")
        upload = await add_upload(registry)
        before = (await registry.list_models(), await registry.list_applications())
    async with Registry.open(store) as registry:
        assert (await registry.list_models(), await registry.list_applications()) == before
        assert (await registry.get_application("hvac")).description == app.description
        assert await registry.get_replica("thermal", "1", 0) == replica
        assert await registry.get_upload("u1") == upload
        assert (await registry.current_version("thermal")).version == "1"
        # The stack of current versions survived too: 1 is the only one left on it.
        with pytest.raises(Conflict):
            await registry.rollback("thermal")


async def test_a_version_1_file_is_migrated_and_keeps_its_rows(db_path: Path) -> None:
    connection = raw(db_path)
    for statement in MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute("INSERT INTO applications VALUES ('hvac', 'doubles', '0', 100000, '', 1)")
    connection.execute(
        "INSERT INTO models VALUES ('thermal', '1', 'doubles', '[\"x\"]', '{}', 'closure', ?, "
        "'/a', NULL, -1, 1, NULL, 2)",
        (SHA_A,),
    )
    connection.execute("INSERT INTO current_versions VALUES (1, 'thermal', '1', 3)")
    connection.execute("INSERT INTO links VALUES ('hvac', 'thermal', 4)")
    connection.execute("PRAGMA user_version = 1")
    connection.close()

    async with Registry.open(db_path) as registry:
        assert await registry.schema_version() == SCHEMA_VERSION
        app = await registry.get_application("hvac")
        assert app.linked_model == "thermal"
        model = await registry.current_version("thermal")
        assert (model.version, model.labels, model.created_ns) == ("1", ("x",), 2)
        # Tables from later versions exist and work.
        assert (await registry.put_replica("thermal", "1", 0, "starting")).state == "starting"
        assert (await add_upload(registry)).state == "open"


async def test_a_failing_migration_leaves_the_file_as_it_was(db_path: Path) -> None:
    connection = raw(db_path)
    for statement in MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute("CREATE TABLE replicas (x INTEGER)")  # in the way of migration 2
    connection.execute("PRAGMA user_version = 1")
    connection.close()

    with pytest.raises(InternalError, match="replicas already exists"):
        await Registry.open(db_path)

    connection = raw(db_path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "uploads" not in tables
    finally:
        connection.close()


async def test_a_file_from_a_newer_modelbus_is_refused_untouched(db_path: Path) -> None:
    connection = raw(db_path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()

    with pytest.raises(Conflict, match="newer") as caught:
        await Registry.open(db_path)
    assert caught.value.details["file_version"] == SCHEMA_VERSION + 1
    assert caught.value.details["supported_version"] == SCHEMA_VERSION

    connection = raw(db_path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        connection.close()


async def test_a_file_that_is_not_sqlite_is_an_internal_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(InternalError, match="not a database"):
        await Registry.open(db_path)


# -- applications ----------------------------------------------------------------------------


async def test_register_get_list_and_delete_applications(registry: Registry) -> None:
    app = await registry.register_application("hvac", "doubles", "-1.0", 100_000, "zone A")
    await registry.register_application("doors", "strings", "closed", 5_000)

    assert await registry.get_application("hvac") == app
    assert app.to_clipper() == {
        "name": "hvac",
        "input_type": "doubles",
        "default_output": "-1.0",
        "latency_slo_micros": 100_000,
        "linked_models": [],
    }
    assert [a.name for a in await registry.list_applications()] == ["doors", "hvac"]

    assert await registry.delete_application("hvac") == app
    assert [a.key for a in await registry.list_applications()] == ["doors"]
    with pytest.raises(NotFound, match="'hvac'"):
        await registry.get_application("hvac")
    with pytest.raises(NotFound, match="'hvac'"):
        await registry.delete_application("hvac")


async def test_a_duplicate_application_is_a_conflict_and_changes_nothing(
    registry: Registry,
) -> None:
    first = await registry.register_application("hvac", "doubles", "0", 100_000)
    with pytest.raises(Conflict, match="'hvac' already exists"):
        await registry.register_application("hvac", "strings", "x", 1)
    assert await registry.get_application("hvac") == first


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_type": "tensors"}, "input_type"),
        ({"latency_slo_micros": 0}, "latency_slo_micros"),
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
    ],
)
async def test_an_invalid_application_is_refused_and_not_stored(
    registry: Registry, fields: dict[str, Any], field: str
) -> None:
    arguments: dict[str, Any] = {
        "name": "hvac",
        "input_type": "doubles",
        "default_output": "0",
        "latency_slo_micros": 100,
    }
    with pytest.raises(InvalidRequest) as caught:
        await registry.register_application(**(arguments | fields))
    assert [error["field"] for error in caught.value.details["errors"]] == [field]
    assert await registry.list_applications() == []


# -- links -----------------------------------------------------------------------------------


async def test_link_and_unlink_a_model(registry: Registry) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry)

    linked = await registry.link_model("hvac", "thermal")
    assert linked.linked_model == "thermal"
    assert await registry.get_application("hvac") == linked
    assert linked.to_clipper()["linked_models"] == ["thermal"]
    assert await registry.linked_models("hvac") == ["thermal"]

    unlinked = await registry.unlink_model("hvac", "thermal")
    assert unlinked.linked_model is None
    assert await registry.linked_models("hvac") == []


async def test_an_application_links_one_model_only(registry: Registry) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry, "thermal")
    await add_model(registry, "occupancy")
    await registry.link_model("hvac", "thermal")

    with pytest.raises(Conflict, match=r"already linked to model 'thermal'.*unlink it first"):
        await registry.link_model("hvac", "occupancy")
    with pytest.raises(Conflict, match="'thermal' is already linked to application 'hvac'"):
        await registry.link_model("hvac", "thermal")
    assert await registry.linked_models("hvac") == ["thermal"]


async def test_linking_needs_an_existing_app_and_model_of_its_input_type(
    registry: Registry,
) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry, "thermal", input_type="strings")

    with pytest.raises(NotFound, match="no application named 'nope'"):
        await registry.link_model("nope", "thermal")
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        await registry.link_model("hvac", "ghost")
    with pytest.raises(InvalidRequest, match="takes strings, but application 'hvac' sends doubles"):
        await registry.link_model("hvac", "thermal")
    assert await registry.linked_models("hvac") == []


async def test_unlinking_what_is_not_linked_is_not_found(registry: Registry) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry, "thermal")
    await add_model(registry, "occupancy")
    await registry.link_model("hvac", "thermal")

    with pytest.raises(NotFound, match=r"not linked to model 'occupancy'.*linked to 'thermal'"):
        await registry.unlink_model("hvac", "occupancy")
    with pytest.raises(NotFound, match="no application named 'nope'"):
        await registry.unlink_model("nope", "thermal")
    with pytest.raises(NotFound, match="no application named 'nope'"):
        await registry.linked_models("nope")
    assert await registry.linked_models("hvac") == ["thermal"]


async def test_deleting_an_application_deletes_its_link(registry: Registry) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry)
    await registry.link_model("hvac", "thermal")

    await registry.delete_application("hvac")
    again = await registry.register_application("hvac", "doubles", "0", 100_000)
    assert again.linked_model is None
    assert await registry.linked_models("hvac") == []
    assert (await registry.current_version("thermal")).version == "1"


async def test_a_linked_model_refuses_versions_of_another_input_type(registry: Registry) -> None:
    await registry.register_application("hvac", "doubles", "0", 100_000)
    await add_model(registry, version="1")
    await registry.link_model("hvac", "thermal")

    with pytest.raises(Conflict, match="linked to application 'hvac', which sends doubles"):
        await add_model(registry, version="2", input_type="strings")
    with pytest.raises(NotFound):
        await registry.get_model("thermal", "2")

    # Registered before the link, an odd version cannot be made current or rolled back to.
    await registry.unlink_model("hvac", "thermal")
    await add_model(registry, version="2", input_type="strings")
    await add_model(registry, version="3")
    await registry.link_model("hvac", "thermal")
    with pytest.raises(Conflict, match="taking strings"):
        await registry.set_current("thermal", "2")
    await registry.set_current("thermal", "3")
    with pytest.raises(Conflict, match="taking strings"):
        await registry.rollback("thermal")  # back to 2
    assert (await registry.current_version("thermal")).version == "3"


# -- models and current versions --------------------------------------------------------------


async def test_register_and_read_a_model_version(registry: Registry, clock: FakeClock) -> None:
    model = await add_model(
        registry,
        labels=["thermal", "zone-a"],
        metadata={"type": "thermal", "context": {"zone": "A"}, "resolution_s": 1800},
        batch_size=16,
        desired_replicas=2,
    )
    assert model.created_ns <= clock.now
    assert model.is_current and not model.is_stopped
    assert await registry.get_model("thermal", "1") == model
    assert model.metadata == {"type": "thermal", "context": {"zone": "A"}, "resolution_s": 1800}
    assert model.key == "thermal:1"
    assert model.to_clipper() == {
        "model_name": "thermal",
        "model_version": "1",
        "is_current_version": True,
        "input_type": "doubles",
        "labels": ["thermal", "zone-a"],
        "container_name": f"closure@sha256:{SHA_A}",
        "model_data_path": "/data/artifacts/thermal-1",
        "batch_size": 16,
    }
    image = await add_model(registry, version="2", artifact_kind="image", image="thermal:2")
    assert image.to_clipper()["container_name"] == "thermal:2"


async def test_every_new_version_becomes_current_as_in_clipper(registry: Registry) -> None:
    await add_model(registry, version="1")
    await add_model(registry, version="2")
    await add_model(registry, version="3", make_current=False)
    await add_model(registry, "occupancy", version="1", make_current=False)

    assert (await registry.current_version("thermal")).version == "2"
    # A model's first version is current even when registered with make_current=False.
    assert (await registry.current_version("occupancy")).version == "1"
    versions = await registry.list_models("thermal")
    assert [(m.version, m.is_current) for m in versions] == [
        ("1", False),
        ("2", True),
        ("3", False),
    ]
    assert [m.key for m in await registry.list_models()] == [
        "occupancy:1",
        "thermal:1",
        "thermal:2",
        "thermal:3",
    ]
    current = await registry.list_models(current_only=True)
    assert [m.key for m in current] == ["occupancy:1", "thermal:2"]
    assert await registry.list_models("ghost") == []


async def test_a_registered_version_is_immutable(registry: Registry) -> None:
    first = await add_model(registry)
    with pytest.raises(Conflict, match="'thermal' version '1' is already registered"):
        await add_model(registry, artifact_sha256=SHA_B, artifact_path="/elsewhere")
    assert await registry.get_model("thermal", "1") == first


async def test_a_registered_version_is_immutable_under_the_registry_too(db_path: Path) -> None:
    async with Registry.open(db_path) as registry:
        first = await add_model(registry)
    connection = raw(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            connection.execute("UPDATE models SET artifact_path = '/evil' WHERE name = 'thermal'")
    finally:
        connection.close()
    async with Registry.open(db_path) as registry:
        assert (await registry.get_model("thermal", "1")).artifact_path == first.artifact_path


async def test_a_version_served_by_a_remote_v2_server(registry: Registry) -> None:
    model = await add_model(
        registry, artifact_kind="v2", artifact_path="http://mlserver:8080", image="doubler"
    )
    assert (await registry.get_model("thermal", "1")) == model
    assert model.to_clipper()["container_name"] == "v2:http://mlserver:8080/v2/models/doubler"
    with pytest.raises(InvalidRequest, match="image"):
        await add_model(registry, version="2", artifact_kind="v2")  # the remote model's name
    with pytest.raises(InvalidRequest, match="artifact_kind"):
        await add_model(registry, version="3", artifact_kind="grpc", image="x")


async def test_a_version_2_file_is_migrated_to_take_remote_versions(db_path: Path) -> None:
    connection = raw(db_path)
    for statement in MIGRATIONS[0] + MIGRATIONS[1]:
        connection.execute(statement)
    connection.execute("PRAGMA user_version = 2")
    connection.close()
    async with Registry.open(db_path) as registry:
        await add_model(registry, artifact_kind="v2", artifact_path="http://h:1", image="m")
    connection = raw(db_path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            connection.execute(
                "INSERT INTO models VALUES ('x', '1', 'doubles', '[]', '{}', 'grpc', ?, "
                "'/a', 'm', -1, 1, NULL, 2)",
                (SHA_A,),
            )
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"artifact_kind": "image"}, "ModelVersion"),  # an image artifact needs its image
        ({"image": "thermal:1"}, "ModelVersion"),  # and a closure has none
        ({"batch_size": 0}, "ModelVersion"),
        ({"artifact_sha256": "ABC"}, "artifact_sha256"),
        ({"labels": "thermal"}, "labels"),
        ({"input_type": "tensors"}, "input_type"),
        ({"desired_replicas": -1}, "desired_replicas"),
    ],
)
async def test_an_invalid_model_version_is_refused_and_not_stored(
    registry: Registry, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await add_model(registry, **fields)
    assert [error["field"] for error in caught.value.details["errors"]] == [field]
    assert await registry.list_models() == []


@pytest.mark.parametrize(("name", "version"), [("Thermal", "1"), ("thermal", "v_1"), ("-x", "1")])
async def test_model_names_and_versions_follow_clippers_rule(
    registry: Registry, name: str, version: str
) -> None:
    with pytest.raises(InvalidRequest, match="pattern"):
        await add_model(registry, name, version)


async def test_metadata_must_be_plain_json(registry: Registry) -> None:
    with pytest.raises(InvalidRequest, match="JSON"):
        await add_model(registry, metadata={"resolution": math.nan})
    assert await registry.list_models() == []


async def test_set_current_and_its_errors(registry: Registry) -> None:
    await add_model(registry, version="1")
    await add_model(registry, version="2")

    model = await registry.set_current("thermal", "1", desired_replicas=3)
    assert (model.version, model.is_current, model.desired_replicas) == ("1", True, 3)
    assert not (await registry.get_model("thermal", "2")).is_current

    with pytest.raises(NotFound, match=r"model 'thermal' has no version '9' \(latest: 1, 2\)"):
        await registry.set_current("thermal", "9")
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        await registry.set_current("ghost", "1")
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        await registry.current_version("ghost")
    with pytest.raises(InvalidRequest, match="negative"):
        await registry.set_current("thermal", "2", desired_replicas=-1)
    assert (await registry.current_version("thermal")).version == "1"


async def test_rollback_walks_back_through_the_current_versions(registry: Registry) -> None:
    for version in ("1", "2", "3"):
        await add_model(registry, version=version)
    await registry.set_current("thermal", "3")  # already current: not a new step back

    assert (await registry.rollback("thermal")).version == "2"
    assert (await registry.current_version("thermal")).version == "2"
    assert (await registry.rollback("thermal")).version == "1"
    with pytest.raises(Conflict, match=r"no earlier current version.*current: '1'"):
        await registry.rollback("thermal")

    await registry.set_current("thermal", "3")
    await registry.set_current("thermal", "2")
    assert (await registry.rollback("thermal")).version == "3"
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        await registry.rollback("ghost")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.one_of(st.sampled_from("1234"), st.none()), max_size=12))
def test_rollback_behaves_like_a_stack_of_current_versions(steps: list[str | None]) -> None:
    """``None`` is a rollback, a version a set_current; checked against a plain list."""

    async def run(path: Path) -> None:
        async with Registry.open(path) as registry:
            for version in "1234":
                await add_model(registry, version=version, make_current=version == "1")
            stack = ["1"]
            for step in steps:
                if step is None and len(stack) == 1:
                    with pytest.raises(Conflict):
                        await registry.rollback("thermal")
                elif step is None:
                    stack.pop()
                    assert (await registry.rollback("thermal")).version == stack[-1]
                else:
                    stack += [step] if stack[-1] != step else []
                    await registry.set_current("thermal", step)
                assert (await registry.current_version("thermal")).version == stack[-1]

    with tempfile.TemporaryDirectory() as directory:
        anyio.run(run, Path(directory) / "registry.db")


# -- nothing half-written ---------------------------------------------------------------------


async def test_a_failure_inside_a_registration_leaves_nothing_behind(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*args: object) -> None:
        raise RuntimeError("crash between the insert and the current version")

    monkeypatch.setattr(model_store, "_push_current", fail)
    with pytest.raises(RuntimeError):
        await add_model(registry)
    monkeypatch.undo()

    assert await registry.list_models() == []
    model = await add_model(registry)  # the registry is usable and the name free
    assert model.is_current


async def test_a_cancelled_registration_leaves_nothing_behind(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached = anyio.Event()

    async def hang(*args: object) -> None:
        reached.set()
        await anyio.sleep_forever()

    monkeypatch.setattr(model_store, "_push_current", hang)
    async with anyio.create_task_group() as group:
        group.start_soon(add_model, registry)
        await reached.wait()
        group.cancel_scope.cancel()
    monkeypatch.undo()

    assert await registry.list_models() == []
    assert (await add_model(registry)).is_current


# -- stopping --------------------------------------------------------------------------------


async def test_stopping_versions_keeps_them_stored(registry: Registry) -> None:
    for version in ("1", "2", "3"):
        await add_model(registry, version=version)

    stopped = await registry.stop_versions({"thermal": ["1", "2"]})
    assert [(m.version, m.is_stopped) for m in stopped] == [("1", True), ("2", True)]
    assert await registry.stop_versions({"thermal": ["1"]}) == []  # already stopped
    listed = await registry.list_models("thermal")
    assert [(m.version, m.is_stopped) for m in listed] == [("1", True), ("2", True), ("3", False)]

    # All or nothing: one unknown version and nothing is stopped.
    with pytest.raises(NotFound, match="no version '9'"):
        await registry.stop_versions({"thermal": ["3", "9"]})
    assert not (await registry.get_model("thermal", "3")).is_stopped

    assert (await registry.unstop_version("thermal", "1")).is_stopped is False


async def test_stop_models_inactive_versions_and_all(registry: Registry) -> None:
    for version in ("1", "2", "3"):
        await add_model(registry, version=version)
    await add_model(registry, "occupancy", version="1")
    await add_model(registry, "weather", version="1")

    inactive = await registry.stop_inactive_versions(["thermal"])
    assert [m.key for m in inactive] == ["thermal:1", "thermal:2"]
    assert not (await registry.current_version("thermal")).is_stopped

    assert [m.key for m in await registry.stop_models(["occupancy"])] == ["occupancy:1"]
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        await registry.stop_models(["weather", "ghost"])
    assert not (await registry.get_model("weather", "1")).is_stopped

    assert [m.key for m in await registry.stop_all_versions()] == ["thermal:3", "weather:1"]
    assert all(m.is_stopped for m in await registry.list_models())
    assert (await registry.current_version("thermal")).version == "3"  # stopping keeps current


async def test_desired_replicas(registry: Registry) -> None:
    await add_model(registry, desired_replicas=1)
    await registry.stop_models(["thermal"])

    still_stopped = await registry.set_desired_replicas("thermal", "1", 0)
    assert (still_stopped.desired_replicas, still_stopped.is_stopped) == (0, True)
    started = await registry.set_desired_replicas("thermal", "1", 4)
    assert (started.desired_replicas, started.is_stopped) == (4, False)
    with pytest.raises(InvalidRequest, match="negative"):
        await registry.set_desired_replicas("thermal", "1", -2)
    with pytest.raises(NotFound):
        await registry.set_desired_replicas("thermal", "2", 1)
    assert (await registry.get_model("thermal", "1")).desired_replicas == 4


# -- replicas --------------------------------------------------------------------------------


async def test_put_get_and_list_replicas(registry: Registry) -> None:
    await add_model(registry, version="1")
    await add_model(registry, version="2", input_type="strings")

    starting = await registry.put_replica("thermal", "1", 0, "starting")
    ready = await registry.put_replica("thermal", "1", 0, "ready", "4242")
    assert (ready.state, ready.handle) == ("ready", "4242")
    assert ready.updated_ns > starting.updated_ns
    assert await registry.get_replica("thermal", "1", 0) == ready
    assert ready.key == "thermal:1:0"
    assert ready.to_clipper() == {
        "model_id": "thermal:1",
        "model_name": "thermal",
        "model_version": "1",
        "model_replica_id": 0,
        "input_type": "doubles",
    }

    await registry.put_replica("thermal", "1", 1, "failed", "4243")
    await registry.put_replica("thermal", "2", 0, "ready", "c0ffee")
    assert [r.key for r in await registry.list_replicas()] == [
        "thermal:1:0",
        "thermal:1:1",
        "thermal:2:0",
    ]
    only_2 = await registry.list_replicas("thermal", "2")
    assert [(r.key, r.input_type) for r in only_2] == [("thermal:2:0", "strings")]


async def test_replica_errors(registry: Registry) -> None:
    await add_model(registry)
    with pytest.raises(NotFound, match="no version '2'"):
        await registry.put_replica("thermal", "2", 0, "ready")
    with pytest.raises(InvalidRequest, match="state"):
        await registry.put_replica("thermal", "1", 0, "sleeping")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="replica_id"):
        await registry.put_replica("thermal", "1", -1, "ready")
    with pytest.raises(NotFound, match="has no replica 0"):
        await registry.get_replica("thermal", "1", 0)
    assert await registry.list_replicas() == []


# -- uploads ---------------------------------------------------------------------------------


async def test_an_upload_from_open_to_committed(registry: Registry) -> None:
    upload = await add_upload(registry, metadata={"image": "thermal:2"})
    assert (upload.state, upload.next_index, upload.chunk_count) == ("open", 0, 3)
    assert await registry.get_upload("u1") == upload

    advanced = await registry.advance_upload("u1", 2)
    assert advanced.next_index == 2 and advanced.touched_ns > upload.touched_ns
    assert await registry.get_upload("u1") == advanced
    with pytest.raises(Conflict, match="2 of 3 chunks"):
        await registry.finish_upload("u1", "committed")

    await registry.advance_upload("u1", 3)
    committed = await registry.finish_upload("u1", "committed")
    assert committed.state == "committed" and committed.is_complete
    # A finished upload is deleted, its metadata with it (issue 12 item 9).
    for call in (
        registry.get_upload("u1"),
        registry.advance_upload("u1", 3),
        registry.finish_upload("u1", "aborted"),
    ):
        with pytest.raises(NotFound, match="no upload 'u1'"):
            await call


async def test_chunks_received_out_of_order_are_ranges_the_prefix_absorbs(
    registry: Registry, clock: FakeClock
) -> None:
    """Shared uploads (proxy/uploads/shared.py): each received chunk is recorded; the prefix
    advances over those received beyond it, and only an advance touches the upload."""
    opened = await add_upload(registry, size=40, chunk_size=4)  # 10 chunks
    assert await registry.received_ranges("u1") == []
    ahead = await registry.receive_chunk("u1", 3)
    assert ahead.next_index == 0 and ahead.touched_ns == opened.touched_ns
    await registry.receive_chunk("u1", 5)
    await registry.receive_chunk("u1", 5)  # sent again: nothing changes
    assert await registry.received_ranges("u1") == [(3, 4), (5, 6)]
    first = await registry.receive_chunk("u1", 0)
    assert first.next_index == 1 and first.touched_ns > opened.touched_ns
    await registry.receive_chunk("u1", 4)
    assert await registry.received_ranges("u1") == [(0, 1), (3, 6)]
    filled = await registry.receive_chunk("u1", 2)
    assert filled.next_index == 1
    filled = await registry.receive_chunk("u1", 1)
    assert filled.next_index == 6 and await registry.get_upload("u1") == filled
    assert await registry.received_ranges("u1") == [(0, 6)]
    assert (await registry.receive_chunk("u1", 2)).next_index == 6  # below the prefix
    with pytest.raises(InvalidRequest, match="past the last chunk"):
        await registry.receive_chunk("u1", 10)
    await registry.receive_chunk("u1", 8)
    await registry.finish_upload("u1", "aborted")  # its received chunks go with it
    with pytest.raises(NotFound):
        await registry.receive_chunk("u1", 9)
    await add_upload(registry, size=40, chunk_size=4)  # the same id again starts empty
    assert await registry.received_ranges("u1") == []


async def test_upload_errors(registry: Registry) -> None:
    await add_upload(registry)
    with pytest.raises(Conflict, match="'u1' already exists"):
        await add_upload(registry, sender="bob-key")
    await registry.advance_upload("u1", 2)
    with pytest.raises(Conflict, match="cannot go back to 1"):
        await registry.advance_upload("u1", 1)
    with pytest.raises(InvalidRequest, match="past the last of 3 chunks"):
        await registry.advance_upload("u1", 4)
    with pytest.raises(InvalidRequest, match="committed or aborted"):
        await registry.finish_upload("u1", "open")  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no upload 'u9'"):
        await registry.get_upload("u9")
    with pytest.raises(InvalidRequest, match="chunk_size"):
        await add_upload(registry, "u2", chunk_size=0)
    assert (await registry.get_upload("u1")).next_index == 2


async def test_open_uploads_per_sender_and_their_limit(registry: Registry) -> None:
    await add_upload(registry, "a1", max_open_per_sender=2)
    await add_upload(registry, "a2", max_open_per_sender=2)
    await add_upload(registry, "b1", sender="bob-key", max_open_per_sender=2)

    with pytest.raises(LimitExceeded, match="2 open uploads") as caught:
        await add_upload(registry, "a3", max_open_per_sender=2)
    assert caught.value.details == {"sender": "alice-key", "limit": 2}
    with pytest.raises(NotFound):
        await registry.get_upload("a3")
    assert [u.upload_id for u in await registry.list_open_uploads("alice-key")] == ["a1", "a2"]

    await registry.finish_upload("a1", "aborted")
    await add_upload(registry, "a3", max_open_per_sender=2)
    assert [u.upload_id for u in await registry.list_open_uploads("alice-key")] == ["a2", "a3"]
    assert [u.upload_id for u in await registry.list_open_uploads("bob-key")] == ["b1"]


async def test_idle_uploads(registry: Registry, clock: FakeClock) -> None:
    clock.now = 1_000
    await add_upload(registry, "old")
    await add_upload(registry, "finished")
    await registry.finish_upload("finished", "aborted")
    clock.now = 5_000
    await add_upload(registry, "busy")
    clock.now = 1_500
    await add_upload(registry, "touched")  # created early, but touched late:
    clock.now = 9_000
    await registry.advance_upload("touched", 1)

    assert [u.upload_id for u in await registry.list_idle_uploads(4_000)] == ["old"]
    assert [u.upload_id for u in await registry.list_idle_uploads(1_000)] == []


# -- several connections on one file ---------------------------------------------------------


async def test_opening_a_new_file_waits_while_another_connection_holds_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a second proxy starting at the same moment sees: SQLite refuses the switch to WAL
    # at once ("locked") while another connection holds the file, without a busy wait.
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    opened: list[Registry] = []
    events: list[str] = []
    refused = anyio.Event()
    row = registry_module._Database.row

    async def seen_refused(self: Any, sql: str, params: Any = ()) -> Any:
        try:
            return await row(self, sql, params)
        except sqlite3.OperationalError:
            refused.set()  # the opening met the lock (and must retry, not fail)
            raise

    monkeypatch.setattr(registry_module._Database, "row", seen_refused)

    async def open_registry() -> None:
        opened.append(await Registry.open(db_path, busy_timeout_s=5.0))
        events.append("opened")

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(open_registry)
            await refused.wait()
            events.append("released")
            blocker.execute("COMMIT")
        assert events == ["released", "opened"]  # it waited for the lock, and did not fail
        assert await opened[0].schema_version() == SCHEMA_VERSION
        assert blocker.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        blocker.close()
        for registry in opened:
            await registry.close()


async def test_two_registries_writing_at_once_lose_nothing(store: str | Path) -> None:
    async with Registry.open(store) as first, Registry.open(store) as second:

        async def write(registry: Registry, prefix: str) -> None:
            for index in range(20):
                await registry.register_application(f"{prefix}{index}", "doubles", "0", 100)
                await add_model(registry, version=f"{prefix}{index}")

        async with anyio.create_task_group() as group:
            group.start_soon(write, first, "a")
            group.start_soon(write, second, "b")

    async with Registry.open(store) as registry:
        assert len(await registry.list_applications()) == 40
        versions = await registry.list_models("thermal")
        assert len(versions) == 40
        assert sum(m.is_current for m in versions) == 1


async def test_a_race_for_one_version_has_one_winner(store: str | Path) -> None:
    """Two connections (two proxies) deploying the same version at once: one winner, and a
    Conflict that says why for every other attempt."""
    outcomes: list[str] = []

    async def attempt(registry: Registry, path: str) -> None:
        try:
            await add_model(registry, artifact_path=path)
            outcomes.append(path)
        except Conflict as exc:
            assert "already registered" in exc.message
            outcomes.append("conflict")

    async with Registry.open(store) as first, Registry.open(store) as second:
        async with anyio.create_task_group() as group:
            for index in range(5):
                group.start_soon(attempt, first, f"/first/{index}")
                group.start_soon(attempt, second, f"/second/{index}")
        stored = await first.get_model("thermal", "1")
    assert outcomes.count("conflict") == 9
    assert stored.artifact_path in outcomes


async def test_the_upload_limit_holds_across_registries(store: str | Path) -> None:
    created: list[str] = []

    async def attempt(registry: Registry, upload_id: str) -> None:
        try:
            await add_upload(registry, upload_id, max_open_per_sender=3)
            created.append(upload_id)
        except LimitExceeded:
            pass

    async with Registry.open(store) as first, Registry.open(store) as second:
        async with anyio.create_task_group() as group:
            for index in range(5):
                group.start_soon(attempt, first, f"first-{index}")
                group.start_soon(attempt, second, f"second-{index}")
        assert len(await first.list_open_uploads("alice-key")) == len(created) == 3


async def test_a_writer_waits_for_another_connections_lock(db_path: Path) -> None:
    async with (
        Registry.open(db_path, busy_timeout_s=5.0) as registry,
        Registry.open(db_path) as reader,
    ):
        blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        events: list[str] = []

        async def write() -> None:
            await registry.register_application("hvac", "doubles", "0", 100)
            events.append("written")

        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await anyio.wait_all_tasks_blocked()  # the write is under way, in its thread
            # (SQLite's busy wait shows nothing to Python: a reader's round trip gives the
            # writer's thread time to reach it; if it has not, the test proves less, never fails)
            assert await reader.list_applications() == []  # WAL: readers go on
            events.append("released")
            blocker.execute("COMMIT")
        blocker.close()
        assert events == ["released", "written"]  # blocked by the other connection, not failed
        assert [a.name for a in await registry.list_applications()] == ["hvac"]


async def test_a_lock_held_past_the_busy_timeout_is_overloaded(db_path: Path) -> None:
    async with Registry.open(db_path, busy_timeout_s=0.1) as registry:
        blocker = raw(db_path)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Overloaded, match="locked"):
                await registry.register_application("hvac", "doubles", "0", 100)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await registry.register_application("hvac", "doubles", "0", 100)  # usable again
        assert len(await registry.list_applications()) == 1
