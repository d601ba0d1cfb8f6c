"""The one error tree of modelbus.

Every error carries a stable wire ``code``, a message a person can act on, and ``details`` (a
small dict of facts). Over the bus an error travels as a reply ``{code, message, details}``;
:func:`error_from_wire` turns it back into the same class on the requester's side, so
``except PermissionMissing`` works across the bus.

    BusError
    ├── TransportError            the broker or socket failed or went away
    │   ├── TransportClosed       used after close()
    │   └── Unsupported           the transport cannot do what was asked (a shared
    │                             subscription on ZeroMQ)
    ├── DecodeError               bytes from the bus are not a valid frame / payload
    │   └── FrameTooLarge         also a LimitExceeded: a frame over the size limit, refused
    │                             on receipt (as a decode error) and before sending (as a limit)
    ├── InvalidUri                a URI or pattern breaks the grammar
    ├── VerificationError         a message was rejected by signature or grant checks
    │   ├── BadSignature
    │   ├── UntrustedRoot         chain does not start at the namespace key
    │   ├── BrokenChain           receiver of one grant is not giver of the next, bad grant sig
    │   ├── GrantExpired
    │   ├── TtlExceeded           re-delegated further than a grant's TTL allows
    │   ├── PermissionMissing     a grant lacks the permission the action needs
    │   ├── OutOfScope            the URI (or pattern) is not contained in a grant's pattern
    │   ├── ReplayedNonce
    │   └── ClockSkew
    ├── NotFound
    ├── Conflict
    ├── LimitExceeded             a size, count or rate limit
    │   ├── FrameTooLarge         (the same class as above)
    │   └── Overloaded            the service is saturated; retry later
    ├── RequestTimeout            no reply in time
    ├── InvalidRequest            well-formed frame, but the request body is wrong
    └── InternalError             the service failed; details are in its log
        └── SandboxUnavailable    untrusted code cannot be sandboxed here (no bubblewrap)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadSignature",
    "BrokenChain",
    "BusError",
    "ClockSkew",
    "Conflict",
    "DecodeError",
    "FrameTooLarge",
    "GrantExpired",
    "InternalError",
    "InvalidRequest",
    "InvalidUri",
    "LimitExceeded",
    "NotFound",
    "OutOfScope",
    "Overloaded",
    "PermissionMissing",
    "ReplayedNonce",
    "RequestTimeout",
    "SandboxUnavailable",
    "TransportClosed",
    "TransportError",
    "TtlExceeded",
    "Unsupported",
    "UntrustedRoot",
    "VerificationError",
    "error_from_wire",
]


class BusError(Exception):
    """Base of every modelbus error."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_wire(self) -> dict[str, Any]:
        """The ``{code, message, details}`` map sent in an error reply."""
        return {"code": self.code, "message": self.message, "details": self.details}


class TransportError(BusError):
    code = "transport"


class TransportClosed(TransportError):
    code = "transport_closed"


class Unsupported(TransportError):
    code = "unsupported"


class DecodeError(BusError):
    code = "decode"


class InvalidUri(BusError):
    code = "invalid_uri"


class VerificationError(BusError):
    code = "verification"


class BadSignature(VerificationError):
    code = "bad_signature"


class UntrustedRoot(VerificationError):
    code = "untrusted_root"


class BrokenChain(VerificationError):
    code = "broken_chain"


class GrantExpired(VerificationError):
    code = "grant_expired"


class TtlExceeded(VerificationError):
    code = "ttl_exceeded"


class PermissionMissing(VerificationError):
    code = "permission_missing"


class OutOfScope(VerificationError):
    code = "out_of_scope"


class ReplayedNonce(VerificationError):
    code = "replayed_nonce"


class ClockSkew(VerificationError):
    code = "clock_skew"


class NotFound(BusError):
    code = "not_found"


class Conflict(BusError):
    code = "conflict"


class LimitExceeded(BusError):
    code = "limit_exceeded"


class FrameTooLarge(DecodeError, LimitExceeded):
    """A frame over the size limit: a decode error when received, a limit when sent."""

    code = "frame_too_large"


class Overloaded(LimitExceeded):
    code = "overloaded"


class RequestTimeout(BusError):
    code = "timeout"


class InvalidRequest(BusError):
    code = "invalid_request"


class InternalError(BusError):
    code = "internal"


class SandboxUnavailable(InternalError):
    code = "sandbox_unavailable"


def _all_subclasses(cls: type[BusError]) -> list[type[BusError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


def error_from_wire(code: object, message: object, details: object = None) -> BusError:
    """Rebuild a typed error from an error reply; unknown codes become a plain BusError."""
    by_code = {c.code: c for c in _all_subclasses(BusError)}
    cls = by_code.get(code, BusError) if isinstance(code, str) else BusError
    error = cls(str(message))
    if isinstance(details, dict):
        error.details = {str(k): v for k, v in details.items()}
    if cls is BusError and isinstance(code, str):
        error.details.setdefault("code", code)
    return error
