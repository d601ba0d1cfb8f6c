"""The whole ``modelbus`` command: the root group with every subcommand attached.

Nothing imports this package; it may import everything (the service, the client library, the
benchmarks). Each subcommand module holds its commands; adding one is an import and a line here.
"""

from __future__ import annotations

from proxy.cli.apps import apps
from proxy.cli.bench import bench
from proxy.cli.bus import bus, pub, query, status, sub
from proxy.cli.containers import containers, service_status
from proxy.cli.dashboard import dashboard
from proxy.cli.demo import demo
from proxy.cli.deploy import deploy
from proxy.cli.diagnose import explain
from proxy.cli.fit import fit
from proxy.cli.keys import grant, keys
from proxy.cli.predict import models, predict
from proxy.cli.root import main
from proxy.cli.route import policy, route
from proxy.cli.schedule import schedule
from proxy.cli.serve import health, serve
from proxy.cli.versions import versions

__all__ = ["main"]

for _command in (
    apps,
    bench,
    bus,
    containers,
    dashboard,
    demo,
    deploy,
    fit,
    grant,
    health,
    keys,
    models,
    policy,
    predict,
    pub,
    query,
    route,
    schedule,
    serve,
    service_status,
    status,
    sub,
    versions,
):
    main.add_command(_command)
main.explain = explain  # grant errors name the proof files and the grant to ask for
