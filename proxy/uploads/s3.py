"""The artifact store in an S3-compatible bucket: ``s3://bucket/prefix`` (AWS S3, MinIO, Ceph…).

Layout under the prefix: ``<sha256>`` for each artifact, ``.touched/<sha256>`` (empty) when it
was last announced as already held (the collection's clock, since an object's time cannot be
changed without copying it), ``.uploads/<upload id>/<index>`` for the chunks of a shared upload.

The endpoint, region and credentials are boto3's own settings — the standard environment
variables (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for a server other than AWS,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``) or the AWS config files — so no
secret is ever on a command line or in the registry. With an endpoint set, requests use path-style
addressing (``http://host:9000/bucket/key``), which every S3-compatible server answers.

Verified both ways: an artifact is uploaded only after the uploads module checked its digest,
with a SHA-256 checksum per part that the server checks on receipt, and becomes visible when the
upload completes (an S3 object never shows half-written). Every download lands in
``<cache>/.incoming-…``, is hashed, and only a copy whose digest matches is renamed to
``<cache>/<sha256>`` and used (to start replicas); a mismatch is an InternalError and the copy
is deleted.

This is the only module that imports boto3 (sync: its calls run in worker threads). Its errors
leave as NotFound (no such key) or InternalError naming the bucket (never the credentials).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Set
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from bus.errors import InternalError, InvalidRequest, NotFound
from bus.transfer import file_sha256
from proxy.uploads.collect import collect_artifacts

__all__ = ["S3Store"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024**2, multipart_chunksize=16 * 1024**2, max_concurrency=4
)
_CHECKSUM = {"ChecksumAlgorithm": "SHA256"}


class S3Store:
    """The :class:`proxy.uploads.store.ArtifactStore` in ``s3://bucket/prefix``, with verified
    local copies in ``cache_dir``."""

    def __init__(self, bucket: str, prefix: str, cache_dir: Path) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        has_endpoint = bool(
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        config = botocore.config.Config(s3={"addressing_style": "path" if has_endpoint else "auto"})
        with self._translating("connecting to"):
            self._client: Any = boto3.session.Session().client("s3", config=config)
        self._fetching: dict[str, anyio.Lock] = {}

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def scratch_dir(self) -> Path:
        return self.cache_dir

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts)) if self.prefix else "/".join(parts)

    async def check(self) -> None:
        await self._call(
            lambda: self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1
            )
        )

    def location_of(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self._key(sha256)}"

    # --- artifacts ----------------------------------------------------------------------------

    async def has(self, sha256: str) -> bool:
        return await self._call(self._exists, self._key(sha256))

    async def touch(self, sha256: str) -> bool:
        if not await self.has(sha256):
            return False
        await self._call(self._put_bytes, self._key(".touched", sha256), b"")
        return True

    async def put(self, path: Path, sha256: str) -> None:
        """Upload the verified file unless the bucket holds the digest; keep it as the cached
        copy."""
        if not await self.has(sha256):
            await self._call(
                lambda: self._client.upload_file(
                    str(path),
                    self.bucket,
                    self._key(sha256),
                    ExtraArgs=_CHECKSUM,
                    Config=_TRANSFER,
                )
            )
            logger.info("artifact %s stored in %s", sha256, self.location)
        try:
            os.replace(path, self.cache_dir / sha256)
        except OSError:  # another filesystem: the next use downloads it
            path.unlink(missing_ok=True)

    async def local(self, sha256: str) -> Path:
        if not _DIGEST.match(sha256):
            raise InvalidRequest(f"not an artifact digest: {sha256[:70]!r}")
        cached = self.cache_dir / sha256
        async with self._fetching.setdefault(sha256, anyio.Lock()):
            if cached.is_file():
                return cached
            incoming = self.cache_dir / f".incoming-{uuid.uuid4().hex}"
            try:
                await self._call(
                    lambda: self._client.download_file(
                        self.bucket, self._key(sha256), str(incoming), Config=_TRANSFER
                    )
                )
                actual = await anyio.to_thread.run_sync(file_sha256, incoming)
                if actual != sha256:
                    raise InternalError(
                        f"artifact {sha256} in {self.location} hashes to {actual}: the store's "
                        "copy is corrupt; upload it again",
                        artifact=sha256,
                    )
                os.replace(incoming, cached)
            finally:
                incoming.unlink(missing_ok=True)
        logger.info("artifact %s fetched from %s and verified", sha256, self.location)
        return cached

    async def local_at(self, location: str) -> Path:
        """A version's artifact by its recorded location: an ``s3://`` location by its digest
        (the last segment) from this store; a path (a version recorded by a directory store
        before) as it is."""
        if location.startswith("s3://"):
            return await self.local(location.rstrip("/").rpartition("/")[2])
        return Path(location)

    async def collect(self, referenced: Set[str], unused_for_s: float) -> list[str]:
        horizon = time.time() - unused_for_s
        deleted = await self._call(self._collect, referenced, horizon)
        await anyio.to_thread.run_sync(
            lambda: collect_artifacts(self.cache_dir, referenced, unused_for_s=unused_for_s)
        )
        if deleted:
            logger.info("collected %d artifacts from %s", len(deleted), self.location)
        return deleted

    def _collect(self, referenced: Set[str], horizon: float) -> list[str]:
        touched = {
            key.rpartition("/")[2]: stamp
            for key, stamp in self._list(self._key(".touched", ""), delimiter=False)
        }
        deleted = []
        for key, stamp in self._list(self._key(""), delimiter=True):
            digest = key.rpartition("/")[2]
            if not _DIGEST.match(digest) or digest in referenced:
                continue
            if max(stamp, touched.get(digest, stamp)) < horizon:
                self._delete([key, self._key(".touched", digest)])
                (self.cache_dir / digest).unlink(missing_ok=True)
                deleted.append(digest)
        return deleted

    # --- chunks of shared uploads -------------------------------------------------------------

    def chunks_location(self, upload_id: str) -> str:
        return f"s3://{self.bucket}/{self._chunk_key(upload_id)}"

    def _chunk_key(self, upload_id: str, *index: int) -> str:
        if not _UPLOAD_ID.match(upload_id):
            raise InvalidRequest(f"not an upload id: {upload_id[:40]!r}")
        return self._key(".uploads", upload_id, *(str(i) for i in index))

    async def put_chunk(self, upload_id: str, index: int, data: bytes) -> None:
        await self._call(self._put_bytes, self._chunk_key(upload_id, index), data)

    async def read_chunk(self, upload_id: str, index: int) -> bytes:
        key = self._chunk_key(upload_id, index)
        data: bytes = await self._call(
            lambda: self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        )
        return data

    async def drop_chunks(self, upload_id: str) -> None:
        prefix = self._chunk_key(upload_id) + "/"
        await self._call(lambda: self._delete([k for k, _ in self._list(prefix, delimiter=False)]))

    # --- the library --------------------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **_CHECKSUM)

    def _list(self, prefix: str, *, delimiter: bool) -> Iterator[tuple[str, float]]:
        """(key, last modified in s since the epoch) of the objects under ``prefix`` (directly
        under it only, with ``delimiter``)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, **({"Delimiter": "/"} if delimiter else {})
        )
        for page in pages:
            for item in page.get("Contents", ()):
                modified: datetime = item["LastModified"]
                yield item["Key"], modified.timestamp()

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking boto3 call in a worker thread, its errors translated."""

        def call() -> T:
            with self._translating("using"):
                return function(*args)

        return await anyio.to_thread.run_sync(call)

    @contextlib.contextmanager
    def _translating(self, doing: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise NotFound(f"not in the artifact store {self.location}") from exc
            raise InternalError(
                f"error {code} {doing} the artifact store {self.location}: "
                f"{exc.response.get('Error', {}).get('Message', '')}",
                code=code,
            ) from exc
        except boto3.exceptions.Boto3Error as exc:  # a managed transfer's failure, wrapped
            raise InternalError(f"error {doing} the artifact store {self.location}: {exc}") from exc
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise InternalError(
                f"cannot reach the artifact store {self.location}: {type(exc).__name__}: {exc}"
            ) from exc


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
