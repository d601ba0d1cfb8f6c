"""The receiving side's checks: is this message from whom it says, and was that entity allowed?

Order of checks, cheapest first: decode and limits → timestamp skew (live messages) → grant chain
(every check without a signature before any signature; verdicts, verified grants and failures
cached, :mod:`bus.verdicts`) → the envelope signature → the replay cache (live messages; only
signed messages are recorded, so forgeries cannot poison it).

The replay cache remembers each accepted live (origin, nonce) for twice the skew window — as
long as a copy of the frame could pass the skew check — and forgets it only then. It holds at
most ``replay_capacity`` entries: when it is full of entries still inside the window, a new live
frame is refused with ``overloaded`` (counted) rather than a nonce forgotten early, which would
let a replay through.

Persisted messages are state, not commands: they may be redelivered long after they were signed,
so skew and replay checks apply only to envelopes with ``persist = false``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping

from bus import envelope as envelopes
from bus import uri as uris
from bus.entity import key_to_text
from bus.envelope import Envelope
from bus.errors import (
    BusError,
    ClockSkew,
    DecodeError,
    Overloaded,
    ReplayedNonce,
    VerificationError,
)
from bus.verdicts import VerdictCache

__all__ = ["Verifier"]

logger = logging.getLogger(__name__)

_ALLOWED_SIZE = 32_768  # remembered authorizations: (sender, proof, URI, right); a monitor of
# 10,000 services authorizes each one's status and state URIs
_FOREVER_NS = 1 << 63


class Verifier:
    """Checks frames from the bus. One per service or client; not thread-safe (one event loop).

    ``aliases`` maps namespace aliases (first URI segment) to namespace keys in text form.
    ``skew_s`` is how far a live message's timestamp may be from this clock; the replay cache
    remembers every live (origin, nonce) for twice that long, and refuses new live frames
    (``Overloaded``) while it holds ``replay_capacity`` entries still inside that window.
    """

    def __init__(
        self,
        *,
        aliases: Mapping[str, str] | None = None,
        skew_s: float = 30.0,
        max_frame_bytes: int = envelopes.DEFAULT_MAX_FRAME,
        verdict_cache: VerdictCache | None = None,
        replay_capacity: int = 1_000_000,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.aliases = dict(aliases or {})
        self.skew_ns = int(skew_s * 1e9)
        self.max_frame_bytes = max_frame_bytes
        self.verdicts = verdict_cache or VerdictCache()
        self.replay_capacity = replay_capacity
        self.clock_ns = clock_ns
        self.rejected: Counter[str] = Counter()
        self._seen: OrderedDict[tuple[Hashable, bytes, bytes], int] = OrderedDict()
        self._last_log_ns: dict[str, int] = {}
        # (sender, proof, asked, right) -> (valid until, counts as a verdict-cache hit)
        self._allowed: OrderedDict[tuple[bytes, tuple[bytes, ...], str, str], tuple[int, bool]] = (
            OrderedDict()
        )

    def canonical(self, uri: str) -> str:
        """The URI with an alias namespace replaced by the namespace key."""
        return uris.with_namespace_key(uri, self.aliases)

    def check_frame(self, frame: bytes, *, right: str = "P") -> Envelope:
        """Decode and verify a frame; raise (and count and log) the specific error."""
        envelope: Envelope | None = None
        try:
            envelope = envelopes.parse(frame, max_bytes=self.max_frame_bytes)
            self.check(envelope, right=right)
        except BusError as error:
            self.record_rejection(error, envelope)
            raise
        return envelope

    def check(self, envelope: Envelope, *, right: str = "P", replay_scope: Hashable = None) -> None:
        """Verify a parsed envelope: skew, grants, signature, replay. A frame is a replay when
        it was accepted before in the same ``replay_scope`` (one per subscription: the same
        frame delivered to two subscriptions of one client is not a replay). Raises only
        BusError: anything else one frame causes is a bug, raised as a DecodeError."""
        try:
            self._check(envelope, right, replay_scope)
        except BusError:
            raise
        except Exception as exc:
            raise DecodeError(f"the frame could not be checked ({type(exc).__name__})") from exc

    def _check(self, envelope: Envelope, right: str, replay_scope: Hashable) -> None:
        now_ns = self.clock_ns()
        if not envelope.persist and abs(now_ns - envelope.ts_ns) > self.skew_ns:
            raise ClockSkew(
                f"message timestamp is {(envelope.ts_ns - now_ns) / 1e9:+.1f} s from this "
                f"clock; the window is ±{self.skew_ns / 1e9:.0f} s",
                uri=envelope.uri,
            )
        self.authorize(envelope.origin, envelope.proof, envelope.uri, right, now_ns=now_ns)
        envelope.check_signature()
        if not envelope.persist:
            self._remember_nonce(envelope, now_ns, replay_scope)

    def authorize(
        self,
        sender: bytes,
        proof: tuple[bytes, ...],
        asked: str,
        right: str,
        *,
        now_ns: int | None = None,
    ) -> None:
        """Raise unless ``proof`` lets ``sender`` do ``right`` on ``asked`` (URI or pattern).
        The namespace owner needs no proof. An answer already given is remembered until the
        chain's earliest expiry (the only check that depends on the time): steady traffic
        costs one dict lookup here, and a verdict-cache hit is counted as before."""
        now_ns = self.clock_ns() if now_ns is None else now_ns
        key = (sender, proof, asked, right)
        allowed = self._allowed.get(key)
        if allowed is not None and now_ns < allowed[0]:
            if allowed[1]:
                self.verdicts.hits += 1
            return
        canonical = self.canonical(asked)
        if uris.namespace_of(canonical) == key_to_text(sender):
            self._remember_allowed(key, (_FOREVER_NS, False))
            return
        verdict = self.verdicts.authorize(sender, proof, canonical, right, now_ns=now_ns)
        self._remember_allowed(key, (verdict.expires_ns, True))

    def _remember_allowed(
        self, key: tuple[bytes, tuple[bytes, ...], str, str], allowed: tuple[int, bool]
    ) -> None:
        remembered = self._allowed
        if len(remembered) >= _ALLOWED_SIZE:
            remembered.popitem(last=False)  # the oldest answer (O(1), unlike a dict's first key)
        remembered[key] = allowed

    def _remember_nonce(self, envelope: Envelope, now_ns: int, scope: Hashable) -> None:
        key = (scope, envelope.origin, envelope.nonce)
        if key in self._seen:
            raise ReplayedNonce(
                "this message was already received (replayed nonce)", uri=envelope.uri
            )
        seen = self._seen
        horizon = now_ns - 2 * self.skew_ns
        while seen and next(iter(seen.values())) < horizon:
            seen.popitem(last=False)  # the oldest first; entries are added in clock order
        if len(seen) >= self.replay_capacity:
            raise Overloaded(
                f"the replay cache is full ({self.replay_capacity} messages in the last "
                f"{2 * self.skew_ns / 1e9:.0f} s); retry shortly",
                limit=self.replay_capacity,
            )
        seen[key] = now_ns

    def record_rejection(self, error: BusError, envelope: Envelope | None) -> None:
        """Count a rejection and log it (at most once a second per error code)."""
        self.rejected[error.code] += 1
        now_ns = time.monotonic_ns()
        if now_ns - self._last_log_ns.get(error.code, 0) < 1_000_000_000:
            return
        self._last_log_ns[error.code] = now_ns
        level = logging.WARNING if isinstance(error, VerificationError) else logging.INFO
        logger.log(
            level,
            "rejected message on %s from %s: %s (%s; %d rejected with this code so far)",
            envelope.uri if envelope else "?",
            key_to_text(envelope.origin) if envelope else "?",
            error.message,
            error.code,
            self.rejected[error.code],
        )
