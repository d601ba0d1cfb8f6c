"""``modelbus demo``: the whole service on this machine, driven end to end over the bus;
``modelbus demo fit``: a fit on data from the bus with no blackout, and a backfilling schedule."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from proxy.bench.demos.fit import run_fit_demo
from proxy.bench.demos.tour import run_demo
from proxy.cli.root import Settings, pass_settings, run_async

__all__ = ["demo"]


def _run(program: Callable[[Path], Awaitable[None]], data_dir: Path | None) -> None:
    if data_dir is not None:
        run_async(program, data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="modelbus-demo-") as tmp:
        run_async(program, Path(tmp))


_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's registry here [default: a temporary directory].",
)


@click.group(invoke_without_command=True)
@_DATA_DIR
@click.pass_context
@pass_settings
def demo(settings: Settings, context: click.Context, data_dir: Path | None) -> None:
    """Deploy a model and predict with it over the bus, end to end, on this machine."""
    if context.invoked_subcommand is None:
        _run(run_demo, data_dir)


@demo.command("fit")
@_DATA_DIR
def demo_fit(data_dir: Path | None) -> None:
    """Fit a model on data published on the bus (no failed request while the new version takes
    over), then a schedule that backfills two missed windows."""
    _run(run_fit_demo, data_dir)
