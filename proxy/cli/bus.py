"""``modelbus bus``, ``pub``, ``sub``, ``query`` and ``status``: run the hub and talk on the bus.

``pub``/``sub``/``query`` are mosquitto_pub/mosquitto_sub for a signed bus: ``pub`` signs with the
root ``--entity`` and presents a ``--proof`` chain that allows it; ``sub`` and ``query`` print
only messages that verify, and a ``REJECTED <topic>: <code>: <message>`` line for every frame
that does not. One line per message::

    <time UTC> <URI> <origin key> <PO number> <decoded value>

Long-running commands (``bus``, ``sub``, ``status --watch``) stop cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import IO, Any
from urllib.parse import urlsplit

import anyio
import click

from bus import (
    PO_BINARY,
    PO_JSON,
    PO_TEXT,
    BusClient,
    DecodeError,
    InvalidRequest,
    Message,
    PayloadObject,
    Rejected,
    RequestTimeout,
    ServiceState,
    TransportError,
    service_states,
)
from bus.liveness.heartbeat import STALE_AFTER_S
from bus.po import check_po_number
from proxy.cli.diagnose import asking
from proxy.cli.root import Settings, format_time_ns, pass_settings, redact_url, run_async
from transports import open_transport

__all__ = ["bus", "pub", "query", "status", "sub"]

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 2.0


@asynccontextmanager
async def _connected(settings: Settings) -> AsyncIterator[BusClient]:
    client = BusClient(
        open_transport(settings.bus_url),
        settings.entity(),
        proofs=settings.proofs(),
        verifier=settings.verifier(),
    )
    async with client:
        yield client


async def _until_stopped(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` until it returns or the process gets SIGINT/SIGTERM."""
    async with anyio.create_task_group() as task_group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("stopping on %s", signal.Signals(signum).name)
                    task_group.cancel_scope.cancel()

        task_group.start_soon(stop_on_signal)
        await body()
        task_group.cancel_scope.cancel()


# ---- bus -------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--listen",
    metavar="URL",
    help="zmq://HOST:PORT to bind (uses PORT, PORT+1, PORT+2). Default: the root --bus.",
)
@pass_settings
def bus(settings: Settings, listen: str | None) -> None:
    """Run the embedded ZeroMQ bus forwarder until Ctrl-C or SIGTERM."""
    url = listen or settings.bus_url
    if urlsplit(url).scheme != "zmq":
        raise TransportError(
            f"'modelbus bus' runs a ZeroMQ forwarder: use zmq://HOST:PORT, not {url}"
        )
    run_async(_until_stopped, lambda: _serve_bus(url))
    click.echo("modelbus bus: stopped")


async def _serve_bus(url: str) -> None:
    from transports.zeromq import DEFAULT_PORT, Forwarder  # only this command needs zmq

    async with Forwarder(url):
        split = urlsplit(url)
        port = split.port or DEFAULT_PORT
        click.echo(f"modelbus bus: serving {url}")
        for offset, role in enumerate(
            ("publishers (XSUB)", "subscribers (XPUB)", "control (ROUTER)")
        ):
            click.echo(f"  {role:<19} tcp://{split.hostname}:{port + offset}")
        click.echo("press Ctrl-C to stop")
        await anyio.sleep_forever()


# ---- pub -------------------------------------------------------------------------------------


@click.command()
@click.argument("uri")
@click.argument("message", required=False)
@click.option("--po", "po_number", metavar="A.B.C.D", help="PO number (default: 64.0.1.0 text).")
@click.option("--json", "as_json", is_flag=True, help="MESSAGE is JSON (PO 65.0.0.0).")
@click.option(
    "--file", "source", type=click.File("rb"), help="Read the payload from a file (-: stdin)."
)
@click.option("--persist", is_flag=True, help="Keep it as the latest message on URI.")
@click.option("--unpersist", is_flag=True, help="Delete the persisted message on URI.")
@pass_settings
def pub(
    settings: Settings,
    uri: str,
    message: str | None,
    po_number: str | None,
    as_json: bool,
    source: IO[bytes] | None,
    persist: bool,
    unpersist: bool,
) -> None:
    """Sign and publish MESSAGE (or --file) on URI.

    The bytes are encoded by the PO range: 64.x text, 65.x JSON (checked), 2.x msgpack (give
    JSON, it is packed), 1.x binary (the default for --file).
    """
    if po_number and as_json:
        raise click.UsageError("--po and --json are exclusive")
    if unpersist:
        if message is not None or source is not None or persist:
            raise click.UsageError("--unpersist takes no MESSAGE, --file or --persist")
        pos: list[PayloadObject] = []
    elif (message is None) == (source is None):
        raise click.UsageError("give MESSAGE or --file (exactly one)")
    else:
        data = message.encode() if message is not None else source.read()  # type: ignore[union-attr]
        default = PO_TEXT if message is not None else PO_BINARY
        pos = [_payload(data, PO_JSON if as_json else po_number or default)]
    canonical = settings.canonical(uri)
    asking(canonical)
    run_async(_publish, settings, canonical, pos, persist or unpersist)
    what = "tombstone" if unpersist else f"{pos[0].number}, {len(pos[0].data)} bytes"
    click.echo(f"published {'persisted ' if persist else ''}{canonical} ({what})")


def _payload(data: bytes, number: str) -> PayloadObject:
    """Check ``data`` against the PO range and encode it (JSON text becomes msgpack for 2.x)."""
    po = PayloadObject(check_po_number(number), data)
    if po.kind == "binary":
        return po
    try:
        text = data.decode()
        value = json.loads(text) if po.kind in ("json", "msgpack") else text
    except ValueError as exc:
        raise InvalidRequest(
            f"the payload is not valid {po.kind} input for PO {number}: {exc}"
        ) from None
    return PayloadObject.msgpack(value, number) if po.kind == "msgpack" else po


async def _publish(settings: Settings, uri: str, pos: list[PayloadObject], persist: bool) -> None:
    async with _connected(settings) as client:
        await client.publish(uri, pos, persist=persist)


# ---- sub and query ---------------------------------------------------------------------------


def describe(item: Message | Rejected) -> str:
    """One line (more for several payload objects) for a verified message or a rejection."""
    if isinstance(item, Rejected):
        return f"REJECTED {item.topic}: {item.error.code}: {item.error.message}"
    head = f"{format_time_ns(item.ts_ns)} {item.uri} {item.origin_text}"
    if not item.pos:
        return f"{head} - (tombstone)" if item.persist else f"{head} - (no payload)"
    lines = [f"{head} {po.number} {_value_text(po)}" for po in item.pos[:1]]
    lines += [f"    + {po.number} {_value_text(po)}" for po in item.pos[1:]]
    return "\n".join(lines)


def _value_text(po: PayloadObject) -> str:
    try:
        value = po.value()
    except DecodeError as error:
        return f"<undecodable: {error.message}>"
    if po.kind == "text":
        return str(value)
    if po.kind == "binary":
        return f"<{len(po.data)} bytes> {po.data[:32].hex()}{'...' if len(po.data) > 32 else ''}"
    return json.dumps(value, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else repr(value)


@click.command()
@click.argument("pattern")
@click.option("--count", type=click.IntRange(min=1), help="Exit after N verified messages.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Exit after S seconds (an error if --count was not reached).",
)
@pass_settings
def sub(settings: Settings, pattern: str, count: int | None, timeout_s: float | None) -> None:
    """Print live messages on PATTERN as they arrive, verified (Ctrl-C stops)."""
    canonical = settings.canonical(pattern)
    asking(canonical)
    received, is_timed_out = run_async(_subscribe, settings, canonical, count, timeout_s)
    if is_timed_out and count is not None and timeout_s is not None:
        raise RequestTimeout(
            f"timed out after {timeout_s:g} s with {received} of {count} messages on {canonical}"
        )


async def _subscribe(
    settings: Settings, pattern: str, count: int | None, timeout_s: float | None
) -> tuple[int, bool]:
    """Print messages until ``count`` or ``timeout_s``; (messages received, timed out)."""
    received = 0

    async def receive() -> None:
        nonlocal received
        async with (
            _connected(settings) as client,
            client.subscribe(pattern, include_rejected=True) as stream,
        ):
            click.echo(f"subscribed to {pattern} on {redact_url(settings.bus_url)}", err=True)
            async for item in stream:
                click.echo(describe(item))
                received += isinstance(item, Message)
                if count is not None and received >= count:
                    return

    with anyio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as deadline:
        await _until_stopped(receive)
    return received, deadline.cancelled_caught


@click.command()
@click.argument("pattern")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="How long to wait for the bus's answer.",
)
@pass_settings
def query(settings: Settings, pattern: str, timeout_s: float) -> None:
    """Print the persisted messages matching PATTERN, verified."""
    canonical = settings.canonical(pattern)
    asking(canonical)
    items = run_async(_query, settings, canonical, timeout_s)
    for item in items:
        click.echo(describe(item))
    if not items:
        click.echo(f"no persisted messages match {canonical}", err=True)


async def _query(settings: Settings, pattern: str, timeout_s: float) -> list[Message | Rejected]:
    async with _connected(settings) as client:
        return await client.query(pattern, timeout_s=timeout_s, include_rejected=True)


# ---- status ----------------------------------------------------------------------------------


@click.command()
@click.argument("pattern")
@click.option("--watch", is_flag=True, help=f"Refresh every {WATCH_INTERVAL_S:g} s until Ctrl-C.")
@click.option(
    "--stale-after",
    "stale_after_s",
    type=click.FloatRange(min=0, min_open=True),
    default=STALE_AFTER_S,
    show_default=True,
    help="Seconds without lastalive before a service counts as dead.",
)
@pass_settings
def status(settings: Settings, pattern: str, watch: bool, stale_after_s: float) -> None:
    """Show which services under PATTERN ('ns/*') are alive, from their heartbeats."""
    canonical = settings.canonical(pattern)
    asking(canonical)
    run_async(_status, settings, canonical, watch, stale_after_s)


async def _status(settings: Settings, pattern: str, watch: bool, stale_after_s: float) -> None:
    async with _connected(settings) as client:

        async def show() -> None:
            while True:
                states = await service_states(client, pattern, stale_after_s=stale_after_s)
                if watch and sys.stdout.isatty():
                    click.echo("\x1b[H\x1b[2J", nl=False)
                if watch:
                    click.echo(f"{format_time_ns(time.time_ns())}  {pattern}")
                click.echo(
                    status_table(states, now_ns=time.time_ns()) or f"no services under {pattern}"
                )
                if not watch:
                    return
                await anyio.sleep(WATCH_INTERVAL_S)

        await _until_stopped(show)


def status_table(states: list[ServiceState], *, now_ns: int) -> str:
    """A fixed-width table: service, ALIVE/DEAD, reason, age of lastalive, seq, status facts;
    below a service served by named instances, a row for each instance (``  └ name``)."""
    if not states:
        return ""
    rows: list[tuple[str, ...]] = [("SERVICE", "STATE", "REASON", "LASTALIVE", "SEQ", "STATUS")]
    for state in states:
        rows.append(_status_row(state.service, state, now_ns))
        for instance in state.instances:  # a service served by named instances: one row each
            rows.append(_status_row(f"  └ {instance.service}", instance, now_ns))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        if index:  # colours on a terminal (click.echo drops them elsewhere): the state at a glance
            colour = "green" if row[1] == "ALIVE" else "yellow" if "stale" in row[2] else "red"
            cells[1] = click.style(cells[1], fg=colour, bold=True)
            cells[2] = click.style(cells[2], fg=colour)
        lines.append(("  ".join(cells) + "  " + row[5]).rstrip())
    return "\n".join(lines)


def _status_row(name: str, state: ServiceState, now_ns: int) -> tuple[str, ...]:
    age = state.age_s(now_ns)
    facts = " ".join(
        f"{key}={_fact(value)}" for key, value in state.status.items() if key not in ("seq", "ts")
    )
    return (
        name,
        "ALIVE" if state.is_alive else "DEAD",
        state.reason,
        "never" if age is None else f"{age:.1f} s ago",
        "-" if state.seq is None else str(state.seq),
        facts,
    )


def _fact(value: Any) -> str:
    return (
        value if isinstance(value, str) else json.dumps(value, default=repr, separators=(",", ":"))
    )
