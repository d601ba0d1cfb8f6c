"""``modelbus demo``: the whole service on this machine, driven end to end over the bus."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from proxy.bench.demo import run_demo
from proxy.cli.root import Settings, pass_settings, run_async

__all__ = ["demo"]


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's registry here [default: a temporary directory].",
)
@pass_settings
def demo(settings: Settings, data_dir: Path | None) -> None:
    """Deploy a model and predict with it over the bus, end to end, on this machine."""
    if data_dir is not None:
        run_async(run_demo, data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="modelbus-demo-") as tmp:
        run_async(run_demo, Path(tmp))
