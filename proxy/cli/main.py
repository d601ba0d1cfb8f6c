"""The whole ``modelbus`` command: the root group with every subcommand attached.

Nothing imports this package; it may import everything (the service, the client library, the
benchmarks). Each subcommand module holds its commands; adding one is an import and a line here.
"""

from __future__ import annotations

from proxy.cli.bench import bench
from proxy.cli.bus import bus, pub, query, status, sub
from proxy.cli.demo import demo
from proxy.cli.deploy import deploy
from proxy.cli.health import health
from proxy.cli.keys import grant, keys
from proxy.cli.root import main
from proxy.cli.serve import serve

__all__ = ["main"]

for _command in (bench, bus, demo, deploy, grant, health, keys, pub, query, serve, status, sub):
    main.add_command(_command)
