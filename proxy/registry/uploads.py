"""Chunked-upload sessions as stored: who sends what, how far it got, where it is spooled.

The upload protocol itself (chunks, digests, acknowledgements, spooling) belongs to the
uploads module; this store keeps its state across restarts, so an upload resumes from
``next_index``, and answers the two questions its limits need: a sender's open uploads
(checked atomically by :meth:`UploadStore.create_upload`) and the uploads idle since a time
(for expiry). For a shared upload (chunks in the artifact store, continued by any proxy:
:mod:`proxy.uploads.shared`) it also keeps the received ranges: :meth:`UploadStore.receive_chunk`
records each chunk — those beyond the prefix in ``upload_chunks`` until the prefix absorbs them
— in one transaction, so every proxy answers with the same ``next_index``. A finished upload
— committed, aborted or expired — is deleted: its row, its received chunks, and its metadata (up
to 64 KiB), do not outlive it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from bus.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from proxy.registry.records import ArtifactKind, Upload
from proxy.registry.sql import Database, Params, Session, build, to_json

__all__ = ["UploadStore"]


class UploadStore:
    """Upload sessions: that part of :class:`proxy.registry.registry.Registry`."""

    _db: Database

    async def create_upload(
        self,
        upload_id: str,
        *,
        sender: str,
        name: str,
        kind: ArtifactKind,
        size: int,
        sha256: str,
        chunk_size: int,
        spool_path: str,
        metadata: Mapping[str, Any] | None = None,
        max_open_per_sender: int | None = None,
    ) -> Upload:
        """Open an upload; beyond ``max_open_per_sender`` open ones it is LimitExceeded."""
        async with self._db.write() as s:
            now = s.clock()
            upload = build(
                Upload,
                upload_id=upload_id,
                sender=sender,
                name=name,
                kind=kind,
                size=size,
                sha256=sha256,
                metadata={} if metadata is None else metadata,
                chunk_size=chunk_size,
                next_index=0,
                spool_path=spool_path,
                state="open",
                created_ns=now,
                touched_ns=now,
            )
            if await s.row("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)):
                raise Conflict(f"upload {upload_id!r} already exists", upload_id=upload_id)
            if max_open_per_sender is not None:
                await _check_open_limit(s, sender, max_open_per_sender)
            await s.exec(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 'open', ?, ?)",
                (
                    *(upload_id, sender, name, kind, size, sha256, to_json(upload.metadata)),
                    *(chunk_size, spool_path, now, now),
                ),
            )
        return upload

    async def get_upload(self, upload_id: str) -> Upload:
        async with self._db.read() as s:
            return await _find(s, upload_id)

    async def advance_upload(self, upload_id: str, next_index: int) -> Upload:
        """Record chunks ``0 .. next_index - 1`` as acknowledged, and touch the upload."""
        async with self._db.write() as s:
            upload = _require_open(await _find(s, upload_id))
            if next_index < upload.next_index:
                raise Conflict(
                    f"upload {upload_id!r} has {upload.next_index} chunks acknowledged; "
                    f"next_index cannot go back to {next_index}",
                    upload_id=upload_id,
                    next_index=upload.next_index,
                )
            fields = upload.model_dump() | {"next_index": next_index, "touched_ns": s.clock()}
            advanced = build(Upload, **fields)
            await s.exec(
                "UPDATE uploads SET next_index = ?, touched_ns = ? WHERE upload_id = ?",
                (next_index, advanced.touched_ns, upload_id),
            )
        return advanced

    async def receive_chunk(self, upload_id: str, index: int) -> Upload:
        """Record chunk ``index`` as received (a shared upload: its bytes are in the artifact
        store), advancing the contiguous prefix over the chunks received beyond it; touches the
        upload when the prefix advances. A chunk received before is fine."""
        async with self._db.write() as s:
            upload = _require_open(await _find(s, upload_id))
            if index >= upload.chunk_count:
                raise InvalidRequest(
                    f"chunk {index} is past the last chunk ({upload.chunk_count - 1})"
                )
            if index < upload.next_index:
                return upload
            await s.exec(
                "INSERT INTO upload_chunks VALUES (?, ?) ON CONFLICT DO NOTHING",
                (upload_id, index),
            )
            rows = await s.rows(
                "SELECT idx FROM upload_chunks WHERE upload_id = ? ORDER BY idx", (upload_id,)
            )
            next_index = upload.next_index
            for row in rows:
                if int(row["idx"]) != next_index:
                    break
                next_index += 1
            if next_index == upload.next_index:
                return upload
            touched = s.clock()
            await s.exec(
                "DELETE FROM upload_chunks WHERE upload_id = ? AND idx < ?", (upload_id, next_index)
            )
            await s.exec(
                "UPDATE uploads SET next_index = ?, touched_ns = ? WHERE upload_id = ?",
                (next_index, touched, upload_id),
            )
        return upload.model_copy(update={"next_index": next_index, "touched_ns": touched})

    async def received_ranges(self, upload_id: str) -> list[tuple[int, int]]:
        """The chunks an upload received, as ``[start, end)`` ranges in order."""
        async with self._db.read() as s:
            upload = await _find(s, upload_id)
            rows = await s.rows(
                "SELECT idx FROM upload_chunks WHERE upload_id = ? ORDER BY idx", (upload_id,)
            )
        ranges = [(0, upload.next_index)] if upload.next_index else []
        for index in (int(row["idx"]) for row in rows):
            if ranges and ranges[-1][1] == index:
                ranges[-1] = (ranges[-1][0], index + 1)
            else:
                ranges.append((index, index + 1))
        return ranges

    async def finish_upload(self, upload_id: str, state: Literal["committed", "aborted"]) -> Upload:
        """Close an open upload and delete it; committing needs every chunk acknowledged.
        Returns the upload as it ended (afterwards it is not found)."""
        if state not in ("committed", "aborted"):
            raise InvalidRequest(f"an upload ends committed or aborted, not {state!r}")
        async with self._db.write() as s:
            upload = _require_open(await _find(s, upload_id))
            if state == "committed" and not upload.is_complete:
                raise Conflict(
                    f"upload {upload_id!r} has {upload.next_index} of {upload.chunk_count} "
                    "chunks acknowledged; it cannot be committed yet",
                    upload_id=upload_id,
                )
            now = s.clock()
            await s.exec("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        return upload.model_copy(update={"state": state, "touched_ns": now})

    async def list_open_uploads(self, sender: str) -> list[Upload]:
        """The sender's open uploads, oldest first."""
        return await self._select("WHERE state = 'open' AND sender = ?", (sender,))

    async def list_idle_uploads(self, touched_before_ns: int) -> list[Upload]:
        """Open uploads last touched before ``touched_before_ns``, for expiry."""
        return await self._select("WHERE state = 'open' AND touched_ns < ?", (touched_before_ns,))

    async def _select(self, where: str, params: Params) -> list[Upload]:
        async with self._db.read() as s:
            rows = await s.rows(f"SELECT * FROM uploads {where} ORDER BY created_ns", params)
            return [s.load(Upload, row) for row in rows]


async def _find(s: Session, upload_id: str) -> Upload:
    row = await s.row("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))
    if row is None:
        raise NotFound(f"no upload {upload_id!r}", upload_id=upload_id)
    return s.load(Upload, row)


async def _check_open_limit(s: Session, sender: str, limit: int) -> None:
    row = await s.row("SELECT count(*) FROM uploads WHERE sender = ? AND state = 'open'", (sender,))
    count = 0 if row is None else int(row[0])
    if count >= limit:
        raise LimitExceeded(
            f"sender has {count} open uploads, the most allowed: commit or abort one first",
            sender=sender,
            limit=limit,
        )


def _require_open(upload: Upload) -> Upload:
    if upload.state != "open":
        raise Conflict(
            f"upload {upload.upload_id!r} is {upload.state}, no longer open",
            upload_id=upload.upload_id,
            state=upload.state,
        )
    return upload
