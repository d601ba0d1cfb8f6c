"""Model replicas: per ``(model, version, replica id)``, the state and the runtime's handle.

The desired count per version lives with the version (:meth:`ModelStore.set_desired_replicas`);
this store records what the backend observed, for Clipper's ``get_all_model_replicas`` and
``get_model_replica_info`` and for dashboards.
"""

from __future__ import annotations

from bus.errors import NotFound
from proxy.registry.records import Replica, ReplicaState
from proxy.registry.sql import Database, build, find_model

__all__ = ["ReplicaStore"]

_SELECT = """
    SELECT r.model_name, r.model_version, r.replica_id, r.state, r.handle, m.input_type,
        r.updated_ns
    FROM replicas r JOIN models m ON m.name = r.model_name AND m.version = r.model_version"""


class ReplicaStore:
    """Replicas: that part of :class:`proxy.registry.registry.Registry`."""

    _db: Database

    async def put_replica(
        self,
        name: str,
        version: str,
        replica_id: int,
        state: ReplicaState,
        handle: str | None = None,
    ) -> Replica:
        """Record a replica's state and runtime handle (a pid or a container id)."""
        async with self._db.write() as s:
            model = await find_model(s, name, version)
            replica = build(
                Replica,
                model_name=name,
                model_version=version,
                replica_id=replica_id,
                state=state,
                handle=handle,
                input_type=model.input_type,
                updated_ns=s.clock(),
            )
            await s.exec(
                "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (model_name, model_version, replica_id) DO UPDATE SET "
                "state = excluded.state, handle = excluded.handle, "
                "updated_ns = excluded.updated_ns",
                (name, version, replica_id, state, handle, replica.updated_ns),
            )
        return replica

    async def get_replica(self, name: str, version: str, replica_id: int) -> Replica:
        """Clipper's ``get_model_replica_info`` (``.to_clipper()`` gives its answer)."""
        async with self._db.read() as s:
            row = await s.row(
                _SELECT + " WHERE r.model_name = ? AND r.model_version = ? AND r.replica_id = ?",
                (name, version, replica_id),
            )
            if row is None:
                raise NotFound(
                    f"model {name!r} version {version!r} has no replica {replica_id}",
                    model=name,
                    version=version,
                    replica_id=replica_id,
                )
            return s.load(Replica, row)

    async def list_replicas(
        self, name: str | None = None, version: str | None = None
    ) -> list[Replica]:
        """Clipper's ``get_all_model_replicas``, optionally of one model or one version."""
        where = (
            " WHERE (CAST(? AS TEXT) IS NULL OR r.model_name = ?)"
            " AND (CAST(? AS TEXT) IS NULL OR r.model_version = ?)"
        )
        order = " ORDER BY r.model_name, m.rowid, r.replica_id"
        async with self._db.read() as s:
            rows = await s.rows(_SELECT + where + order, (name, name, version, version))
            return [s.load(Replica, row) for row in rows]
