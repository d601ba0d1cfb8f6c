"""The seam between the registry's stores and SQLite, and the lookups they share.

A store (:mod:`proxy.registry.apps`, :mod:`proxy.registry.models`, :mod:`proxy.registry.replicas`,
:mod:`proxy.registry.uploads`) runs each operation in one transaction from its :class:`Database` —
``async with db.write() as s:`` takes the write lock up front, so the checks made inside
hold until commit — and issues SQL through the :class:`Session` it gets.
:mod:`proxy.registry.registry` implements these over aiosqlite, :mod:`proxy.registry.postgres`
over asyncpg.

The stores' SQL is written once, in the dialect both engines share: ``?`` placeholders (the
PostgreSQL session numbers them), ``TRUE``/``FALSE``, a typed ``CAST(? AS TEXT)`` where a
parameter's type cannot be inferred (``? IS NULL``), ``ON CONFLICT … DO UPDATE`` upserts,
``m.rowid`` for registration order (a real column in PostgreSQL). What differs — ``BEGIN
IMMEDIATE``, the DDL, the error codes — stays in the two implementations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from bus.errors import Conflict, InvalidRequest, NotFound
from proxy.registry.records import Application, ModelVersion

__all__ = [
    "APP_SELECT",
    "MODEL_SELECT",
    "Clock",
    "Database",
    "Params",
    "Row",
    "Session",
    "build",
    "check_links_accept",
    "current_version_of",
    "find_app",
    "find_model",
    "find_versions",
    "to_json",
]

R = TypeVar("R", bound=BaseModel)
Clock = Callable[[], int]
Params = Sequence[object]


class Row(Protocol):
    """A result row, by column name or position (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Session(Protocol):
    """SQL inside one open transaction."""

    clock: Clock

    async def rows(self, sql: str, params: Params = ()) -> Sequence[Row]: ...

    async def row(self, sql: str, params: Params = ()) -> Row | None: ...

    async def exec(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def exec_many(self, sql: str, rows: Sequence[Params]) -> int:
        """Run a statement once per parameter row, in one call; the rows changed in all."""
        ...

    def load(self, cls: type[R], row: Row) -> R:
        """Validate a stored row into a record; a bad row is an InternalError."""
        ...


class Database(Protocol):
    def read(self) -> AbstractAsyncContextManager[Session]: ...

    def write(self) -> AbstractAsyncContextManager[Session]: ...


APP_SELECT = """
    SELECT a.name, a.input_type, a.default_output, a.latency_slo_micros, a.description,
        a.created_ns, l.model_name AS linked_model
    FROM applications a LEFT JOIN links l ON l.app_name = a.name"""

MODEL_SELECT = """
    SELECT m.name, m.version, m.input_type, m.labels, m.metadata, m.artifact_kind,
        m.artifact_sha256, m.artifact_path, m.image, m.batch_size, m.desired_replicas,
        m.stopped_ns, m.created_ns,
        coalesce(m.version = (SELECT c.version FROM current_versions c
            WHERE c.model_name = m.name ORDER BY c.seq DESC LIMIT 1), FALSE) AS is_current
    FROM models m"""


def build(cls: type[R], **fields: Any) -> R:
    """Validate what a caller asks to store; a bad field is an :class:`InvalidRequest`."""
    try:
        return cls.model_validate(fields)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(map(str, error["loc"])) or cls.__name__, "message": error["msg"]}
            for error in exc.errors()
        ]
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidRequest(f"invalid {cls.__name__}: {text}", errors=problems) from exc


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
"""``json.dumps`` with these options builds an encoder per call; one does for every call."""


def to_json(value: object) -> str:
    try:
        return _ENCODER.encode(value)
    except ValueError as exc:
        raise InvalidRequest(f"not storable as JSON: {exc}") from exc


async def find_app(s: Session, name: str) -> Application:
    row = await s.row(APP_SELECT + " WHERE a.name = ?", (name,))
    if row is None:
        raise NotFound(f"no application named {name!r}", app=name)
    return s.load(Application, row)


async def find_versions(s: Session, name: str | None) -> list[ModelVersion]:
    """The versions of one model (or of all), by name then registration order."""
    sql = MODEL_SELECT + " WHERE CAST(? AS TEXT) IS NULL OR m.name = ? ORDER BY m.name, m.rowid"
    return [s.load(ModelVersion, row) for row in await s.rows(sql, (name, name))]


async def find_model(s: Session, name: str, version: str) -> ModelVersion:
    row = await s.row(MODEL_SELECT + " WHERE m.name = ? AND m.version = ?", (name, version))
    if row is not None:
        return s.load(ModelVersion, row)
    known = [model.version for model in await find_versions(s, name)]
    if not known:
        raise NotFound(f"no model named {name!r}", model=name)
    raise NotFound(
        f"model {name!r} has no version {version!r} (latest: {', '.join(known[-10:])})",
        model=name,
        version=version,
    )


async def current_version_of(s: Session, name: str) -> str | None:
    """The top of the model's stack of current versions; None only for an unknown model."""
    row = await s.row(
        "SELECT version FROM current_versions WHERE model_name = ? ORDER BY seq DESC LIMIT 1",
        (name,),
    )
    return None if row is None else str(row["version"])


async def check_links_accept(s: Session, name: str, input_type: str) -> None:
    """Refuse a version whose input type differs from an application the model is linked to."""
    row = await s.row(
        "SELECT a.name, a.input_type FROM links l JOIN applications a ON a.name = l.app_name "
        "WHERE l.model_name = ? AND a.input_type != ? ORDER BY a.name LIMIT 1",
        (name, input_type),
    )
    if row is not None:
        raise Conflict(
            f"model {name!r} is linked to application {row['name']!r}, which sends "
            f"{row['input_type']}; a version of it taking {input_type} cannot serve it",
            model=name,
            app=row["name"],
            input_type=input_type,
        )
