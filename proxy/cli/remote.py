"""What the commands that talk to a modelbus service share: ``--service``, ``--json``, the call.

Every such command names its service the same way ``modelbus deploy`` does — ``--service NS``
(a namespace key or alias, optionally followed by ``/PATH``; ``MODELBUS_SERVICE`` in the
environment) — and prints either a readable answer or, with ``--json``, the service's reply as
JSON on one line, for scripts. :func:`call_service` connects as the root ``--entity`` with its
``--proof`` chains, checks that the service is alive (a quick, clear error instead of a request
that times out), runs one coroutine with a :class:`~container_manager.service.ServiceClient`
and disconnects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from bus import BusClient
from bus.errors import VerificationError
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from proxy.cli.diagnose import asking
from proxy.cli.root import Settings, run_async
from transports import open_transport

__all__ = [
    "call_service",
    "cell",
    "emit",
    "json_option",
    "key_values",
    "pairs",
    "service_option",
    "service_uri",
    "table",
]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def service_option(command: _F) -> _F:
    """The ``--service NS[/PATH]`` option (``MODELBUS_SERVICE``), as ``modelbus deploy`` has."""
    return click.option(
        "--service",
        "service",
        envvar="MODELBUS_SERVICE",
        required=True,
        metavar="NS[/PATH]",
        help=f"The service: its namespace (key or alias), with PATH {DEFAULT_SERVICE_PATH} by "
        "default.  [env: MODELBUS_SERVICE]",
    )(command)


def json_option(command: _F) -> _F:
    """``--json``: print the service's reply as JSON (one line) instead of text."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the reply as JSON, for scripts."
    )(command)


def service_uri(settings: Settings, service: str) -> str:
    """``NS`` or ``NS/PATH`` → the canonical service URI (an alias namespace replaced)."""
    canonical = settings.canonical(service.strip("/"))
    return canonical if "/" in canonical else f"{canonical}/{DEFAULT_SERVICE_PATH}"


def call_service(
    settings: Settings,
    service: str,
    call: Callable[[ServiceClient], Awaitable[_T]],
    *,
    timeout_s: float = 30.0,
) -> _T:
    """Run ``call`` against the service named by ``--service``, after a liveness check."""
    uri = service_uri(settings, service)
    asking(uri)
    client = BusClient(
        open_transport(settings.bus_url),
        settings.entity(),
        proofs=settings.proofs(),
        verifier=settings.verifier(),
    )

    async def run() -> _T:
        async with client as bus:
            remote = ServiceClient(bus, uri, timeout_s=timeout_s)
            # Without the right to read its heartbeat, the request itself will tell.
            with contextlib.suppress(VerificationError):
                await remote.check_alive()
            return await call(remote)

    return run_async(run)


def emit(value: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """Print ``value`` as JSON (``--json``) or as ``text(value)``, if that is not empty."""
    if as_json:
        click.echo(json.dumps(value, sort_keys=True, default=_jsonable))
        return
    shown = text(value)
    if shown:
        click.echo(shown)


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else str(value)


def cell(value: Any) -> str:
    """A value as one table cell or field: text as it is, ``-`` for none, lists by commas."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table, the header in capitals; the last column is not padded."""
    texts = [[column.upper() for column in header], *[[cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in texts) for i in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in texts
    )


def key_values(record: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """``key: value`` lines, aligned, in ``keys`` order (default: the record's own order)."""
    shown = [key for key in (keys or list(record)) if key in record]
    width = max((len(key) for key in shown), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {cell(record[key])}" for key in shown)


def pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments (``--label``, ``--env``) as a map; a usage error otherwise."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        found[key] = rest
    return found
