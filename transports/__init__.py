"""Transports for the bus: memory, ZeroMQ (with its forwarder) and MQTT, opened from a URL."""

from transports.factory import open_or_embed, open_transport, transport_names

__all__ = ["open_or_embed", "open_transport", "transport_names"]
