"""The registry's SQLite schema, as an ordered list of migrations.

``MIGRATIONS[n]`` takes a file from schema version ``n`` to ``n + 1``; a new file starts at 0
(``PRAGMA user_version``). :class:`proxy.registry.registry.Registry` applies the pending ones in one
transaction when it opens a file and refuses a file whose version is newer than
:data:`SCHEMA_VERSION`.

Rules for whoever adds a migration:
- append, never edit a shipped one: files in the field were built by it;
- plain statements, one per string (no ``executescript``: it would commit on its own);
- tables are ``STRICT``; a table rebuild (SQLite's 12-step ``ALTER``) must keep the
  foreign keys valid, since the migration runs with ``foreign_keys`` on.

History:
1. the Clipper management surface: applications, model versions (immutable, with a trigger),
   the stack of current versions per model (its top is current; rollback pops it), links.
2. runtime state: model replicas and chunked uploads.
3. routing: release contracts and selection policies per application (spec and state as JSON),
   and the prediction log (proxy.registry.routes).
4. fit jobs (:mod:`proxy.registry.fit_jobs`), schedules and their windows
   (:mod:`proxy.registry.schedules`).
5. versions served by a remote Open Inference Protocol server: ``models.artifact_kind`` may be
   ``v2``. Widening a CHECK is the one schema change SQLite documents doing by editing the
   table's text (``writable_schema``, then ``RESET``) rather than rebuilding the table, which
   foreign keys to ``models`` would forbid here; the index after it is DDL, so the schema
   cookie changes and other connections reload the schema.
6. shared uploads (:mod:`proxy.uploads.shared`): ``upload_chunks`` holds the chunks an upload
   received beyond its contiguous prefix (``uploads.next_index``); with it, the received
   ranges are in the registry, where every proxy sharing it sees them.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_INPUT_TYPES = "('integers', 'floats', 'doubles', 'bytes', 'strings')"
_ARTIFACT_KINDS = "('closure', 'image')"

_V1 = (
    f"""
    CREATE TABLE applications (
        name TEXT PRIMARY KEY,
        input_type TEXT NOT NULL CHECK (input_type IN {_INPUT_TYPES}),
        default_output TEXT NOT NULL,
        latency_slo_micros INTEGER NOT NULL CHECK (latency_slo_micros > 0),
        description TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    ) STRICT
    """,
    f"""
    CREATE TABLE models (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        input_type TEXT NOT NULL CHECK (input_type IN {_INPUT_TYPES}),
        labels TEXT NOT NULL,
        metadata TEXT NOT NULL,
        artifact_kind TEXT NOT NULL CHECK (artifact_kind IN {_ARTIFACT_KINDS}),
        artifact_sha256 TEXT NOT NULL,
        artifact_path TEXT NOT NULL,
        image TEXT,
        batch_size INTEGER NOT NULL CHECK (batch_size = -1 OR batch_size > 0),
        desired_replicas INTEGER NOT NULL CHECK (desired_replicas >= 0),
        stopped_ns INTEGER,
        created_ns INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    ) STRICT
    """,
    """
    CREATE TRIGGER models_are_immutable
    BEFORE UPDATE OF name, version, input_type, labels, metadata, artifact_kind,
        artifact_sha256, artifact_path, image, batch_size, created_ns ON models
    BEGIN
        SELECT RAISE(ABORT, 'a registered model version is immutable');
    END
    """,
    """
    CREATE TABLE current_versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        model_name TEXT NOT NULL,
        version TEXT NOT NULL,
        set_ns INTEGER NOT NULL,
        FOREIGN KEY (model_name, version) REFERENCES models (name, version)
    ) STRICT
    """,
    "CREATE INDEX current_versions_by_model ON current_versions (model_name, seq)",
    """
    CREATE TABLE links (
        app_name TEXT PRIMARY KEY REFERENCES applications (name) ON DELETE CASCADE,
        model_name TEXT NOT NULL,
        linked_ns INTEGER NOT NULL
    ) STRICT
    """,
    "CREATE INDEX links_by_model ON links (model_name)",
)

_V2 = (
    """
    CREATE TABLE replicas (
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        replica_id INTEGER NOT NULL CHECK (replica_id >= 0),
        state TEXT NOT NULL CHECK (state IN ('starting', 'ready', 'failed', 'stopped')),
        handle TEXT,
        updated_ns INTEGER NOT NULL,
        PRIMARY KEY (model_name, model_version, replica_id),
        FOREIGN KEY (model_name, model_version) REFERENCES models (name, version)
    ) STRICT
    """,
    f"""
    CREATE TABLE uploads (
        upload_id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN {_ARTIFACT_KINDS}),
        size INTEGER NOT NULL CHECK (size >= 0),
        sha256 TEXT NOT NULL,
        metadata TEXT NOT NULL,
        chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
        next_index INTEGER NOT NULL CHECK (next_index >= 0),
        spool_path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'aborted')),
        created_ns INTEGER NOT NULL,
        touched_ns INTEGER NOT NULL
    ) STRICT
    """,
    "CREATE INDEX open_uploads_by_sender ON uploads (sender) WHERE state = 'open'",
    "CREATE INDEX open_uploads_by_touch ON uploads (touched_ns) WHERE state = 'open'",
)

_V3 = (
    """
    CREATE TABLE app_policies (
        app_name TEXT NOT NULL REFERENCES applications (name) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('contract', 'selection')),
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_ns INTEGER NOT NULL,
        PRIMARY KEY (app_name, kind)
    ) STRICT
    """,
    """
    CREATE TABLE prediction_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        app_name TEXT NOT NULL,
        log_key TEXT NOT NULL,
        query_id TEXT NOT NULL,
        record TEXT NOT NULL
    ) STRICT
    """,
    "CREATE INDEX prediction_log_by_key ON prediction_log (app_name, log_key, seq)",
)


_FIT_STATES = "('queued', 'running', 'succeeded', 'failed', 'interrupted')"
_WINDOW_STATES = "('pending', 'running', 'done', 'failed', 'skipped')"

_V4_FITS_AND_SCHEDULES = (
    f"""
    CREATE TABLE fit_jobs (
        job_id TEXT PRIMARY KEY,
        model_name TEXT NOT NULL,
        parent_version TEXT NOT NULL,
        new_version TEXT NOT NULL,
        requester TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN {_FIT_STATES}),
        request TEXT NOT NULL,
        progress TEXT NOT NULL,
        error TEXT,
        log TEXT NOT NULL,
        attempts INTEGER NOT NULL CHECK (attempts >= 0),
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        finished_ns INTEGER
    ) STRICT
    """,
    "CREATE INDEX fit_jobs_by_model ON fit_jobs (model_name, created_ns)",
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        inputs TEXT NOT NULL,
        output TEXT NOT NULL,
        spec TEXT NOT NULL,
        owner TEXT NOT NULL,
        paused INTEGER NOT NULL CHECK (paused IN (0, 1)),
        cursor INTEGER NOT NULL CHECK (cursor >= 0),
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL
    ) STRICT
    """,
    f"""
    CREATE TABLE schedule_windows (
        schedule TEXT NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
        idx INTEGER NOT NULL CHECK (idx >= 0),
        window_key TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        due_ns INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN {_WINDOW_STATES}),
        attempts INTEGER NOT NULL CHECK (attempts >= 0),
        next_try_ns INTEGER NOT NULL,
        claimed_by TEXT,
        lease_until_ns INTEGER,
        reason TEXT,
        output TEXT,
        model_version TEXT,
        started_ns INTEGER,
        finished_ns INTEGER,
        PRIMARY KEY (schedule, idx)
    ) STRICT
    """,
    "CREATE UNIQUE INDEX schedule_windows_by_key ON schedule_windows (schedule, window_key)",
    "CREATE INDEX open_schedule_windows ON schedule_windows (schedule, idx) "
    "WHERE state IN ('pending', 'running')",
)


_V5_REMOTE_V2 = (
    "PRAGMA writable_schema = ON",
    """
    UPDATE sqlite_schema SET sql = replace(sql,
        'artifact_kind IN (''closure'', ''image'')',
        'artifact_kind IN (''closure'', ''image'', ''v2'')')
    WHERE type = 'table' AND name = 'models'
    """,
    "PRAGMA writable_schema = RESET",
    "CREATE INDEX models_by_kind ON models (artifact_kind)",
)

_V6_SHARED_UPLOADS = (
    """
    CREATE TABLE upload_chunks (
        upload_id TEXT NOT NULL REFERENCES uploads (upload_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL CHECK (idx >= 0),
        PRIMARY KEY (upload_id, idx)
    ) STRICT
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _V2,
    _V3,
    _V4_FITS_AND_SCHEDULES,
    _V5_REMOTE_V2,
    _V6_SHARED_UPLOADS,
)
SCHEMA_VERSION = len(MIGRATIONS)
