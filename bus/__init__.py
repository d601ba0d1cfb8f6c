"""The modelbus protocol: URIs, envelopes, entities, grants, the transport seam, the bus client.

Import from here: ``from bus import BusClient, Entity, Grant, Heartbeat, PayloadObject``.
"""

from bus import uri
from bus.client import BusClient
from bus.entity import Entity, key_from_text, key_to_text, public_key_of
from bus.envelope import Envelope
from bus.errors import (
    BadSignature,
    BrokenChain,
    BusError,
    ClockSkew,
    Conflict,
    DecodeError,
    FrameTooLarge,
    GrantExpired,
    InternalError,
    InvalidRequest,
    InvalidUri,
    LimitExceeded,
    NotFound,
    OutOfScope,
    Overloaded,
    PermissionMissing,
    ReplayedNonce,
    RequestTimeout,
    TransportClosed,
    TransportError,
    TtlExceeded,
    UntrustedRoot,
    VerificationError,
    error_from_wire,
)
from bus.grants import ChainVerdict, Grant, Permissions, decode_chain, encode_chain, load_chain
from bus.liveness.heartbeat import Heartbeat
from bus.liveness.monitor import ServiceState, service_states
from bus.message import Message, MessageStream, Rejected, consume_right
from bus.po import (
    PO_BINARY,
    PO_JSON,
    PO_METADATA,
    PO_MSGPACK,
    PO_REPLY,
    PO_REQUEST,
    PO_STATE,
    PO_STATUS,
    PO_TEXT,
    PayloadObject,
)
from bus.rpc import Request, reply_uri
from bus.transport import DEFAULT_BUFFER, Delivery, Subscription, Transport, Will
from bus.verifier import Verifier

__all__ = [
    "DEFAULT_BUFFER",
    "PO_BINARY",
    "PO_JSON",
    "PO_METADATA",
    "PO_MSGPACK",
    "PO_REPLY",
    "PO_REQUEST",
    "PO_STATE",
    "PO_STATUS",
    "PO_TEXT",
    "BadSignature",
    "BrokenChain",
    "BusClient",
    "BusError",
    "ChainVerdict",
    "ClockSkew",
    "Conflict",
    "DecodeError",
    "Delivery",
    "Entity",
    "Envelope",
    "FrameTooLarge",
    "Grant",
    "GrantExpired",
    "Heartbeat",
    "InternalError",
    "InvalidRequest",
    "InvalidUri",
    "LimitExceeded",
    "Message",
    "MessageStream",
    "NotFound",
    "OutOfScope",
    "Overloaded",
    "PayloadObject",
    "PermissionMissing",
    "Permissions",
    "Rejected",
    "ReplayedNonce",
    "Request",
    "RequestTimeout",
    "ServiceState",
    "Subscription",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TtlExceeded",
    "UntrustedRoot",
    "VerificationError",
    "Verifier",
    "Will",
    "consume_right",
    "decode_chain",
    "encode_chain",
    "error_from_wire",
    "key_from_text",
    "key_to_text",
    "load_chain",
    "public_key_of",
    "reply_uri",
    "service_states",
    "uri",
]
