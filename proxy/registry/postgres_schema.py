"""The registry's PostgreSQL schema: the twin of :mod:`proxy.registry.schema`, step by step.

``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``, exactly as the SQLite
migration of the same index does: the same tables, columns in the same order (the stores insert
by position), the same checks. A database's version is the one row of ``modelbus_schema``.
:class:`proxy.registry.postgres.PostgresDatabase` applies the pending ones in one transaction
under an advisory lock, so two proxies starting at once migrate once.

Differences from the SQLite text, each for a reason:
- integers are ``BIGINT`` (SQLite's ``INTEGER`` holds 64 bits; nanosecond stamps need them);
- text is ``COLLATE "C"``: names sort by code point, as SQLite's ``BINARY`` sorts them,
  whatever locale the database was created with;
- ``models`` ends with ``rowid``, an identity column, for the registration order SQLite's own
  rowid gives; ``current_versions.seq`` is an identity column too;
- immutability is a PL/pgSQL trigger function;
- a change to a model's current versions is announced to every listening proxy on the channel
  ``modelbus_current`` (the model's name as payload, at commit), which SQLite has no way to do.

Whoever adds a SQLite migration adds its twin here at the same index: a test checks that both
lists have the same length.
"""

from __future__ import annotations

__all__ = ["CURRENT_CHANNEL", "MIGRATIONS", "SCHEMA_VERSION", "VERSION_TABLE"]

CURRENT_CHANNEL = "modelbus_current"

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS modelbus_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE "
    "CHECK (one), version BIGINT NOT NULL)"
)

_T = 'TEXT COLLATE "C"'
_INPUT_TYPES = "('integers', 'floats', 'doubles', 'bytes', 'strings')"
_ARTIFACT_KINDS = "('closure', 'image')"

_V1 = (
    f"""
    CREATE TABLE applications (
        name {_T} PRIMARY KEY,
        input_type {_T} NOT NULL CHECK (input_type IN {_INPUT_TYPES}),
        default_output {_T} NOT NULL,
        latency_slo_micros BIGINT NOT NULL CHECK (latency_slo_micros > 0),
        description {_T} NOT NULL,
        created_ns BIGINT NOT NULL
    )
    """,
    f"""
    CREATE TABLE models (
        name {_T} NOT NULL,
        version {_T} NOT NULL,
        input_type {_T} NOT NULL CHECK (input_type IN {_INPUT_TYPES}),
        labels {_T} NOT NULL,
        metadata {_T} NOT NULL,
        artifact_kind {_T} NOT NULL CHECK (artifact_kind IN {_ARTIFACT_KINDS}),
        artifact_sha256 {_T} NOT NULL,
        artifact_path {_T} NOT NULL,
        image {_T},
        batch_size BIGINT NOT NULL CHECK (batch_size = -1 OR batch_size > 0),
        desired_replicas BIGINT NOT NULL CHECK (desired_replicas >= 0),
        stopped_ns BIGINT,
        created_ns BIGINT NOT NULL,
        rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        PRIMARY KEY (name, version)
    )
    """,
    """
    CREATE FUNCTION models_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'a registered model version is immutable'
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER models_are_immutable
    BEFORE UPDATE OF name, version, input_type, labels, metadata, artifact_kind,
        artifact_sha256, artifact_path, image, batch_size, created_ns ON models
    FOR EACH ROW EXECUTE FUNCTION models_are_immutable()
    """,
    f"""
    CREATE TABLE current_versions (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        model_name {_T} NOT NULL,
        version {_T} NOT NULL,
        set_ns BIGINT NOT NULL,
        FOREIGN KEY (model_name, version) REFERENCES models (name, version)
    )
    """,
    "CREATE INDEX current_versions_by_model ON current_versions (model_name, seq)",
    f"""
    CREATE TABLE links (
        app_name {_T} PRIMARY KEY REFERENCES applications (name) ON DELETE CASCADE,
        model_name {_T} NOT NULL,
        linked_ns BIGINT NOT NULL
    )
    """,
    "CREATE INDEX links_by_model ON links (model_name)",
)

_V2 = (
    f"""
    CREATE TABLE replicas (
        model_name {_T} NOT NULL,
        model_version {_T} NOT NULL,
        replica_id BIGINT NOT NULL CHECK (replica_id >= 0),
        state {_T} NOT NULL CHECK (state IN ('starting', 'ready', 'failed', 'stopped')),
        handle {_T},
        updated_ns BIGINT NOT NULL,
        PRIMARY KEY (model_name, model_version, replica_id),
        FOREIGN KEY (model_name, model_version) REFERENCES models (name, version)
    )
    """,
    f"""
    CREATE TABLE uploads (
        upload_id {_T} PRIMARY KEY,
        sender {_T} NOT NULL,
        name {_T} NOT NULL,
        kind {_T} NOT NULL CHECK (kind IN {_ARTIFACT_KINDS}),
        size BIGINT NOT NULL CHECK (size >= 0),
        sha256 {_T} NOT NULL,
        metadata {_T} NOT NULL,
        chunk_size BIGINT NOT NULL CHECK (chunk_size > 0),
        next_index BIGINT NOT NULL CHECK (next_index >= 0),
        spool_path {_T} NOT NULL,
        state {_T} NOT NULL CHECK (state IN ('open', 'committed', 'aborted')),
        created_ns BIGINT NOT NULL,
        touched_ns BIGINT NOT NULL
    )
    """,
    "CREATE INDEX open_uploads_by_sender ON uploads (sender) WHERE state = 'open'",
    "CREATE INDEX open_uploads_by_touch ON uploads (touched_ns) WHERE state = 'open'",
)

_V3 = (
    f"""
    CREATE TABLE app_policies (
        app_name {_T} NOT NULL REFERENCES applications (name) ON DELETE CASCADE,
        kind {_T} NOT NULL CHECK (kind IN ('contract', 'selection')),
        spec {_T} NOT NULL,
        state {_T} NOT NULL,
        updated_ns BIGINT NOT NULL,
        PRIMARY KEY (app_name, kind)
    )
    """,
    f"""
    CREATE TABLE prediction_log (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        app_name {_T} NOT NULL,
        log_key {_T} NOT NULL,
        query_id {_T} NOT NULL,
        record {_T} NOT NULL
    )
    """,
    "CREATE INDEX prediction_log_by_key ON prediction_log (app_name, log_key, seq)",
)

_FIT_STATES = "('queued', 'running', 'succeeded', 'failed', 'interrupted')"
_WINDOW_STATES = "('pending', 'running', 'done', 'failed', 'skipped')"

_V4_FITS_AND_SCHEDULES = (
    f"""
    CREATE TABLE fit_jobs (
        job_id {_T} PRIMARY KEY,
        model_name {_T} NOT NULL,
        parent_version {_T} NOT NULL,
        new_version {_T} NOT NULL,
        requester {_T} NOT NULL,
        state {_T} NOT NULL CHECK (state IN {_FIT_STATES}),
        request {_T} NOT NULL,
        progress {_T} NOT NULL,
        error {_T},
        log {_T} NOT NULL,
        attempts BIGINT NOT NULL CHECK (attempts >= 0),
        created_ns BIGINT NOT NULL,
        updated_ns BIGINT NOT NULL,
        finished_ns BIGINT
    )
    """,
    "CREATE INDEX fit_jobs_by_model ON fit_jobs (model_name, created_ns)",
    f"""
    CREATE TABLE schedules (
        name {_T} PRIMARY KEY,
        model {_T} NOT NULL,
        inputs {_T} NOT NULL,
        output {_T} NOT NULL,
        spec {_T} NOT NULL,
        owner {_T} NOT NULL,
        paused BIGINT NOT NULL CHECK (paused IN (0, 1)),
        cursor BIGINT NOT NULL CHECK (cursor >= 0),
        created_ns BIGINT NOT NULL,
        updated_ns BIGINT NOT NULL
    )
    """,
    f"""
    CREATE TABLE schedule_windows (
        schedule {_T} NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
        idx BIGINT NOT NULL CHECK (idx >= 0),
        window_key {_T} NOT NULL,
        start_ns BIGINT NOT NULL,
        end_ns BIGINT NOT NULL,
        due_ns BIGINT NOT NULL,
        state {_T} NOT NULL CHECK (state IN {_WINDOW_STATES}),
        attempts BIGINT NOT NULL CHECK (attempts >= 0),
        next_try_ns BIGINT NOT NULL,
        claimed_by {_T},
        lease_until_ns BIGINT,
        reason {_T},
        output {_T},
        model_version {_T},
        started_ns BIGINT,
        finished_ns BIGINT,
        PRIMARY KEY (schedule, idx)
    )
    """,
    "CREATE UNIQUE INDEX schedule_windows_by_key ON schedule_windows (schedule, window_key)",
    "CREATE INDEX open_schedule_windows ON schedule_windows (schedule, idx) "
    "WHERE state IN ('pending', 'running')",
)

_V5_REMOTE_V2 = (
    "ALTER TABLE models DROP CONSTRAINT models_artifact_kind_check",
    """
    ALTER TABLE models ADD CONSTRAINT models_artifact_kind_check
        CHECK (artifact_kind IN ('closure', 'image', 'v2'))
    """,
    "CREATE INDEX models_by_kind ON models (artifact_kind)",
    """
    CREATE FUNCTION modelbus_current_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('modelbus_current', coalesce(NEW.model_name, OLD.model_name));
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER current_versions_changed AFTER INSERT OR DELETE ON current_versions
    FOR EACH ROW EXECUTE FUNCTION modelbus_current_changed()
    """,
)

_V6_SHARED_UPLOADS = (
    f"""
    CREATE TABLE upload_chunks (
        upload_id {_T} NOT NULL REFERENCES uploads (upload_id) ON DELETE CASCADE,
        idx BIGINT NOT NULL CHECK (idx >= 0),
        PRIMARY KEY (upload_id, idx)
    )
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
