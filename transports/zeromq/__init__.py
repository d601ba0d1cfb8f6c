"""The ZeroMQ transport and its forwarder, the hub that ``modelbus bus`` runs.

Ports: a bus URL ``zmq://host:P`` names three consecutive TCP ports on the forwarder.

    P     XSUB    publishers connect their XPUB here; the forwarder subscribes to everything
    P+1   XPUB    subscribers connect their SUB here; ZeroMQ filters by topic prefix per subscriber
    P+2   ROUTER  control requests from a DEALER

Wire: multipart ZeroMQ messages and nothing else; topics are UTF-8 bus URIs, frames are opaque.

    data      [topic, frame]                     XPUB -> XSUB, forwarded XPUB -> SUB
    control   [b"ping"]                          -> [b"ok"]
              [b"persist", topic, frame]         -> [b"ok"]  after keeping ``frame`` as the latest
                                                    for ``topic`` (empty deletes it) and forwarding
                                                    [topic, frame] to live subscribers
              [b"query", pattern]                -> [b"ok", topic1, frame1, topic2, frame2, ...]
                                                    kept frames matching ``pattern``, by topic
              anything else                      -> [b"error", message]

A client subscribes its SUB to the literal prefix of a pattern (``bus.uri.literal_prefix``) and
filters every delivery with ``bus.uri.matches``. Readiness is awaited, never slept for:
``connect()`` waits for the forwarder's subscription to arrive on the client's XPUB, and
``subscribe()`` sends a private probe (topic ``\\x00probe\\x00<hex>``, never a valid URI, forwarded
but never kept or validated) through the forwarder and returns once it comes back on the SUB. A
probe can overtake the subscription it checks, so it is re-sent with a growing interval until it
returns. ``close()`` sends one more probe so that frames published before it reach the forwarder.

Limits and ordering: high-water marks of 100,000 messages on every socket, set before bind and
connect. A publisher blocks (up to ``request_timeout_s``) instead of dropping when its own queue
is full; the forwarder drops per slow subscriber. Frames above ``max_frame_bytes`` (16 MiB) are
dropped by the forwarder with a warning; a peer sending a frame 1 MiB above that is disconnected by
ZeroMQ itself (MAXMSGSIZE). Live frames from one transport arrive in publish order; persisted
publishes are acknowledged one by one and are not ordered with live ones. Kept frames live in the
forwarder's memory and go when it stops.

ZeroMQ has no Last Will: a ``will`` passed to ``connect()`` is ignored (and logged). Liveness on
this transport is by staleness of ``!meta/lastalive``.

Modules: :mod:`~transports.zeromq.sockets` (URLs, socket sets, the pump),
:mod:`~transports.zeromq.forwarder` (the hub), :mod:`~transports.zeromq.client` (the transport),
:mod:`~transports.zeromq.embed` (a service's choice between joining a bus and embedding one).
"""

from transports.zeromq.client import ZmqTransport
from transports.zeromq.embed import embedded_or_connected
from transports.zeromq.forwarder import Forwarder
from transports.zeromq.sockets import DEFAULT_HWM, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_PORT",
    "Forwarder",
    "ZmqTransport",
    "embedded_or_connected",
]
