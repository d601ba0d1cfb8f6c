"""``modelbus health``: is the service behind a health file ready and alive? (exit 0 or 1)

For probes: ``modelbus serve --health-file /run/modelbus/health`` keeps the file
(:mod:`proxy.service.health`); ``modelbus health --file /run/modelbus/health --max-age 30``
checks it, without touching the bus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from proxy.service.health import check_health_file

__all__ = ["health"]


@click.command()
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file `modelbus serve --health-file` keeps.",
)
@click.option(
    "--max-age",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds since the service last wrote it, past which it is not alive.",
)
def health(path: Path, max_age: float) -> None:
    """Exit 0 if the service keeping FILE finished starting and wrote it within MAX-AGE s."""
    problem = check_health_file(path, max_age)
    if problem is not None:
        click.echo(f"unhealthy: {problem}", err=True)
        sys.exit(1)
    click.echo("healthy")
