"""The benchmark programs behind ``modelbus bench`` and the demo behind ``modelbus demo``.

The only part of :mod:`proxy` that drives :mod:`container_manager` or a raw library (paho, pyzmq,
aiohttp) to measure a baseline; nothing but :mod:`proxy.cli` imports it.
"""
