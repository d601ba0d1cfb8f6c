"""Routing policies' storage: each application's release contract and selection policy (spec
and state as JSON), and the prediction log.

A policy row is ``(app, kind)`` with kind ``contract`` or ``selection``; it goes when its
application is deleted. ``save_policy_state`` replaces the state in one transaction and only
if the spec is still the one the state was made for (a spec changed meanwhile wins). The
prediction log keeps at most ``log_retention`` records per application (oldest deleted first,
checked as records are appended); records are JSON maps (``chooser.policies.LogRecord``), a bin
value stored as ``{"base64": str}``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from bus.errors import InternalError, InvalidRequest, NotFound
from proxy.registry.sql import Database, Session, find_app, to_json

__all__ = ["DEFAULT_LOG_RETENTION", "PolicyKind", "RouteStore"]

PolicyKind = Literal["contract", "selection"]
DEFAULT_LOG_RETENTION = 100_000


def _json(text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InternalError(f"a stored {what} is not JSON: was the file changed?") from exc


class RouteStore:
    """Policies and the prediction log: the part of :class:`proxy.registry.registry.Registry`
    they make."""

    _db: Database
    log_retention: int = DEFAULT_LOG_RETENTION

    async def set_policy(
        self, app: str, kind: PolicyKind, spec: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """Store (or replace) an application's policy; an unknown application is NotFound."""
        async with self._db.write() as s:
            await find_app(s, app)
            await s.exec(
                "INSERT INTO app_policies VALUES (?, ?, ?, ?, ?) ON CONFLICT (app_name, kind) "
                "DO UPDATE SET spec = excluded.spec, state = excluded.state, "
                "updated_ns = excluded.updated_ns",
                (app, kind, to_json(spec), to_json(state), s.clock()),
            )

    async def save_policy_state(
        self, app: str, kind: PolicyKind, spec: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        """Replace the state if the stored spec is ``spec``; false if it is not (or is gone)."""
        async with self._db.write() as s:
            changed = await s.exec(
                "UPDATE app_policies SET state = ?, updated_ns = ? "
                "WHERE app_name = ? AND kind = ? AND spec = ?",
                (to_json(state), s.clock(), app, kind, to_json(spec)),
            )
        return changed > 0

    async def get_policy(
        self, app: str, kind: PolicyKind
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(spec, state)`` as stored, or None when the application has no such policy."""
        async with self._db.read() as s:
            row = await s.row(
                "SELECT spec, state FROM app_policies WHERE app_name = ? AND kind = ?",
                (app, kind),
            )
        if row is None:
            return None
        return _json(row["spec"], "policy"), _json(row["state"], "policy state")

    async def delete_policy(self, app: str, kind: PolicyKind) -> None:
        async with self._db.write() as s:
            if not await s.exec(
                "DELETE FROM app_policies WHERE app_name = ? AND kind = ?", (app, kind)
            ):
                raise NotFound(f"application {app!r} has no {kind}", app=app)

    async def append_log(self, app: str, records: list[dict[str, Any]]) -> None:
        """Append records (each with ``key`` and ``query_id``), then trim to the retention."""
        async with self._db.write() as s:
            for record in records:
                await s.exec(
                    "INSERT INTO prediction_log (app_name, log_key, query_id, record) "
                    "VALUES (?, ?, ?, ?)",
                    (app, record["key"], str(record["query_id"]), _record_json(record)),
                )
            await _trim(s, app, self.log_retention)

    async def read_log(
        self, app: str, key: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` records of an application (of one key), oldest first."""
        async with self._db.read() as s:
            rows = await s.rows(
                "SELECT record FROM prediction_log WHERE app_name = ? "
                "AND (? IS NULL OR log_key = ?) ORDER BY seq DESC LIMIT ?",
                (app, key, key, limit),
            )
        return [_json(row["record"], "log record") for row in reversed(rows)]


def _record_json(record: dict[str, Any]) -> str:
    """A log record as JSON: a bin value becomes ``{"base64": str}``; NaN and infinities are
    kept (as Python's JSON writes them), since a model may answer them."""

    def bin_as_text(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"base64": base64.b64encode(value).decode("ascii")}
        raise TypeError(f"{type(value).__name__} is not storable")

    try:
        return json.dumps(record, sort_keys=True, separators=(",", ":"), default=bin_as_text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"a log record is not storable as JSON: {exc}") from None


async def _trim(s: Session, app: str, keep: int) -> None:
    await s.exec(
        "DELETE FROM prediction_log WHERE app_name = ? AND seq <= ("
        "SELECT seq FROM prediction_log WHERE app_name = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (app, app, keep),
    )
