"""What a requester may use: a model whose training streams it may all consume.

The proof travels with the request: the forecast operations take ``proofs``, a list of grant
chains, each encoded as a chain file's bytes (``bus.grants.encode_chain``: what ``modelbus grant
-o FILE`` writes). A model with training streams is usable when, for every stream, some presented
chain (or none, for the stream's namespace owner) lets the *requester* — the key that signed the
request — consume (``C``) that URI, checked by the service's :class:`bus.Verifier` (signatures,
expiry, TTLs, scope). A chain granted to another key proves nothing. A model with no training
streams needs nothing beyond the ``slot/predict`` grant that let the request in.

A model the requester may not use is given to the chooser as unusable, so it shapes neither the
answer, nor a gap's reason, nor a listing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bus import Verifier
from bus.entity import key_from_text
from bus.errors import BusError, InvalidRequest
from bus.grants import MAX_CHAIN, decode_chain
from chooser import Candidate

__all__ = ["MAX_PROOFS", "MAX_PROOF_BYTES", "Access"]

MAX_PROOFS = 16
MAX_PROOF_BYTES = MAX_CHAIN * 4096

Usable = Callable[[Candidate], bool]


class Access:
    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    def usable_for(self, requester: str, proofs: Sequence[bytes]) -> Usable:
        """The filter of what ``requester`` (key text) may use with ``proofs``; InvalidRequest
        naming the index of a proof that is no chain."""
        sender = key_from_text(requester)
        chains: list[tuple[bytes, ...]] = [()]
        for number, data in enumerate(proofs):
            try:
                chain = decode_chain(data)
            except BusError:
                raise InvalidRequest(
                    f"proof {number} is not a grant chain (a chain file's bytes)", proof=number
                ) from None
            chains.append(tuple(grant.encode() for grant in chain))
        allowed: dict[str, bool] = {}

        def may_consume(stream: str) -> bool:
            if stream not in allowed:
                allowed[stream] = any(self._allows(sender, chain, stream) for chain in chains)
            return allowed[stream]

        def usable(candidate: Candidate) -> bool:
            return all(may_consume(stream) for stream in candidate.metadata.training_streams)

        return usable

    def _allows(self, sender: bytes, chain: tuple[bytes, ...], stream: str) -> bool:
        try:
            self._verifier.authorize(sender, chain, stream, "C")
        except BusError:
            return False
        return True
