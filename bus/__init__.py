"""The modelbus protocol: URIs, envelopes, entities, grants, the transport seam, the bus client."""

from bus import uri
from bus.errors import *  # noqa: F403
from bus.errors import __all__ as _errors_all
from bus.transport import DEFAULT_BUFFER, Delivery, Subscription, Transport, Will

__all__ = sorted(
    [*_errors_all, "DEFAULT_BUFFER", "Delivery", "Subscription", "Transport", "Will", "uri"]
)
