"""The verdict cache: what grant chains allow, remembered so that neither steady traffic nor a
flood of bogus chains costs a signature check per grant.

A valid chain's verdict is kept (LRU by the SHA-256 of the chain's bytes) until its earliest
expiry, so a steady stream from one sender costs one signature check per message, the
envelope's. For a chain not in the cache, :meth:`VerdictCache.authorize` runs, in order:

1. the failure cache — a (chain, sender, asked, right) that failed in the last
   ``failure_ttl_s`` fails again with the same error, for the cost of two hashes;
2. every check that needs no signature (:func:`bus.grants.check_structure`, then the sender,
   namespace, rights and scope of :meth:`~bus.grants.ChainVerdict.authorize`);
3. the grants' signatures, root first.

Grants are remembered by their exact bytes (LRU, ``grant_size``) with their decoded form and,
once checked, whether their signature holds: a chain copied from the bus with a forged grant
appended costs one decode and one signature check, not one per grant.

A failure at 2 or 3 is remembered (at most ``failure_size``, oldest dropped first). Every failure
is final: no check depends on the time except expiry, and a chain only gets older.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bus.errors import BadSignature, BusError
from bus.grants import ChainVerdict, Grant, check_structure

__all__ = ["VerdictCache"]


def _chain_key(proof: tuple[bytes, ...]) -> bytes:
    return hashlib.sha256(b"".join(len(p).to_bytes(4, "big") + p for p in proof)).digest()


@dataclass(frozen=True, slots=True)
class _Failure:
    """A remembered failed check: how to build its error again (a fresh exception each time,
    never one re-raised with a growing traceback) and the clock span it holds for."""

    rebuild: Callable[[], BusError]
    since_ns: int
    until_ns: int


@dataclass(slots=True)
class _KnownGrant:
    """A grant's decoded form and, once checked, the outcome of its signature check."""

    grant: Grant
    signature_error: BadSignature | None = None
    is_verified: bool = False


class VerdictCache:
    """Chain verdicts, verified grants and recent failures; one per Verifier (one event loop)."""

    def __init__(
        self,
        size: int = 1024,
        *,
        grant_size: int = 1024,
        failure_size: int = 1024,
        failure_ttl_s: float = 30.0,
    ) -> None:
        self.size = size
        self.grant_size = grant_size
        self.failure_size = failure_size
        self.failure_ttl_ns = int(failure_ttl_s * 1e9)
        self.hits = 0
        self.misses = 0
        self.failure_hits = 0
        self._verdicts: OrderedDict[bytes, ChainVerdict] = OrderedDict()
        self._grants: OrderedDict[bytes, _KnownGrant] = OrderedDict()
        self._failures: OrderedDict[bytes, _Failure] = OrderedDict()

    def verdict(self, proof: tuple[bytes, ...], *, now_ns: int) -> ChainVerdict:
        """The verified verdict of a chain, whoever presents it. Failures are not remembered
        here (there is no sender to key them by): use :meth:`authorize` for received frames."""
        key = _chain_key(proof)
        cached = self._cached(key, now_ns)
        if cached is not None:
            return cached
        self.misses += 1
        known = self._decoded(proof)
        verdict = check_structure(tuple(entry.grant for entry in known), now_ns=now_ns)
        self._check_signatures(known)
        return self._store(key, verdict)

    def authorize(
        self, sender: bytes, proof: tuple[bytes, ...], asked: str, right: str, *, now_ns: int
    ) -> ChainVerdict:
        """Raise the specific error unless ``proof`` lets ``sender`` do ``right`` on ``asked``
        (a URI or pattern, namespace canonical); return the chain's verdict."""
        key = _chain_key(proof)
        cached = self._cached(key, now_ns)
        if cached is not None:
            cached.authorize(sender, asked, right, now_ns=now_ns)
            return cached
        failure_key = hashlib.sha256(
            b"".join((key, sender, right.encode(), b"\x00", asked.encode()))
        ).digest()
        failure = self._failures.get(failure_key)
        if failure is not None and failure.since_ns <= now_ns < failure.until_ns:
            self.failure_hits += 1
            raise failure.rebuild()
        self.misses += 1
        try:
            known = self._decoded(proof)
            verdict = check_structure(tuple(entry.grant for entry in known), now_ns=now_ns)
            verdict.authorize(sender, asked, right, now_ns=now_ns)
            self._check_signatures(known)
        except BusError as error:
            self._remember_failure(failure_key, error, now_ns)
            raise
        return self._store(key, verdict)

    def _cached(self, key: bytes, now_ns: int) -> ChainVerdict | None:
        cached = self._verdicts.get(key)
        if cached is None or now_ns >= cached.expires_ns:
            return None
        self.hits += 1
        self._verdicts.move_to_end(key)
        return cached

    def _store(self, key: bytes, verdict: ChainVerdict) -> ChainVerdict:
        self._verdicts[key] = verdict
        if len(self._verdicts) > self.size:
            self._verdicts.popitem(last=False)
        return verdict

    def _decoded(self, proof: tuple[bytes, ...]) -> list[_KnownGrant]:
        grants = self._grants
        known = []
        for data in proof:
            entry = grants.get(data)
            if entry is None:
                entry = grants[data] = _KnownGrant(Grant.decode(data))
                if len(grants) > self.grant_size:
                    grants.popitem(last=False)
            else:
                grants.move_to_end(data)
            known.append(entry)
        return known

    @staticmethod
    def _check_signatures(known: list[_KnownGrant]) -> None:
        for entry in known:
            if entry.signature_error is not None:
                error = entry.signature_error
                raise BadSignature(error.message, **error.details)
            if not entry.is_verified:
                try:
                    entry.grant.check_signature()
                except BadSignature as error:
                    entry.signature_error = error
                    raise
                entry.is_verified = True

    def _remember_failure(self, key: bytes, error: BusError, now_ns: int) -> None:
        failures = self._failures
        while failures and next(iter(failures.values())).until_ns <= now_ns:
            failures.popitem(last=False)  # expired entries are the oldest, in front
        kind, message, details = type(error), error.message, dict(error.details)
        failures[key] = _Failure(
            lambda: kind(message, **details), now_ns, now_ns + self.failure_ttl_ns
        )
        failures.move_to_end(key)
        if len(failures) > self.failure_size:
            failures.popitem(last=False)
