"""The ``modelbus`` root group and what its subcommands share: settings, errors, helpers.

Common options belong to the root group and go before the subcommand; each has an environment
variable, so a shell that exports them can run every subcommand bare::

    modelbus [--bus URL] [--entity FILE] [--proof FILE]... [--alias NAME=KEY]... [-v] COMMAND

    --bus     MODELBUS_BUS      the bus URL (zmq://, mqtt://, memory://)
    --entity  MODELBUS_ENTITY   the entity file that signs (commands that publish or grant)
    --proof   MODELBUS_PROOF    grant chain files the entity presents (os.pathsep-separated)
    --alias   MODELBUS_ALIASES  namespace aliases, NAME=KEY (comma-separated in the variable)

:func:`main` builds one frozen :class:`Settings` from them, configures logging (nowhere else
does), and hands the settings to the subcommand as ``ctx.obj``. The subcommands are attached in
:mod:`proxy.cli.main` with ordinary imports. Every expected failure (a :class:`bus.BusError`, an
unreadable file) prints
``error: <message>`` on stderr and exits 1; there is no traceback and no secret seed in any output.
A usage error (an unknown, missing or malformed option or argument) is click's: the usage and
``Error: <message>``, exit status 2 — as ``modelbus --help`` says (:data:`EXIT_STATUS`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from pydantic import BaseModel, ConfigDict, ValidationError

from bus import (
    BusError,
    Entity,
    Grant,
    InvalidUri,
    Verifier,
    key_from_text,
    runner,
)
from bus import uri as uris
from bus.grants import load_chain
from proxy.service.settings import DEFAULT_BUS

__all__ = [
    "EXIT_STATUS",
    "CliError",
    "Settings",
    "format_time_ns",
    "main",
    "pass_settings",
    "read_chain",
    "redact_url",
    "relative_time",
    "run_async",
]

logger = logging.getLogger(__name__)

KEY_TEXT_LENGTH = 43  # an Ed25519 key in unpadded base64url

_P = ParamSpec("_P")
_T = TypeVar("_T")


class CliError(click.ClickException):
    """An expected failure of a command: printed as ``error: <message>``, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Settings(BaseModel):
    """What every subcommand may need, from the root group's options and the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bus_url: str = DEFAULT_BUS
    entity_path: Path | None = None
    proof_paths: tuple[Path, ...] = ()
    aliases: dict[str, str] = {}
    verbose: int = 0

    def entity(self) -> Entity:
        """The signing entity; a clear error when none was named."""
        if self.entity_path is None:
            raise CliError(
                "this command signs: pass --entity FILE (before the command) or set "
                "MODELBUS_ENTITY; make one with 'modelbus keys new FILE'"
            )
        return Entity.load(self.entity_path)

    def proofs(self) -> list[tuple[Grant, ...]]:
        """The grant chains named by --proof / MODELBUS_PROOF, decoded (not yet verified)."""
        return [read_chain(path) for path in self.proof_paths]

    def verifier(self) -> Verifier:
        return Verifier(aliases=self.aliases)

    def canonical(self, uri: str) -> str:
        """``uri`` (or a pattern) with an alias namespace replaced by its key
        (:func:`bus.uri.with_namespace_key`); a namespace that is then no key is an error."""
        canonical = uris.with_namespace_key(uri, self.aliases)
        namespace = uris.namespace_of(canonical)
        if len(namespace) == KEY_TEXT_LENGTH:
            return canonical
        raise InvalidUri(
            f"the namespace {namespace!r} is neither a 43-character key nor a known alias; "
            f"pass --alias {namespace}=KEY or set MODELBUS_ALIASES",
            uri=uri,
        )


def read_chain(path: Path) -> tuple[Grant, ...]:
    """A chain file's grants (:func:`bus.grants.load_chain`)."""
    return load_chain(path)


def pass_settings(command: Callable[..., _T]) -> Callable[..., _T]:
    """Hand the command the root group's :class:`Settings` as its first argument."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        settings = click.get_current_context().find_root().obj
        if not isinstance(settings, Settings):
            raise RuntimeError("run this command as part of the modelbus command (proxy.cli.main)")
        return command(settings, *args, **kwargs)

    return wrapper


def run_async(function: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a command's coroutine on asyncio (the transports need it), on uvloop if installed."""
    return runner.run(function, *args, **kwargs)


def format_time_ns(ts_ns: int) -> str:
    """UTC ISO-8601 with milliseconds: ``2026-11-23T16:40:01.123Z``."""
    seconds, rest = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def relative_time(delta_s: float) -> str:
    """``in 29 days`` / ``3 hours ago``: the largest whole unit, rounded down."""
    magnitude = abs(delta_s)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if magnitude >= size or unit == "second":
            count = int(magnitude // size)
            text = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {text}" if delta_s >= 0 else f"{text} ago"
    raise AssertionError("unreachable")


class _Alias(click.ParamType[tuple[str, str]]):
    """``NAME=KEY``; in MODELBUS_ALIASES several are separated by commas."""

    name = "NAME=KEY"
    envvar_list_splitter = ","

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, key = str(value).strip().partition("=")
        if not sep:
            self.fail(f"{value!r} is not NAME=KEY", param, ctx)
        try:
            uris.parse(name)
            key_from_text(key)
        except BusError as error:
            self.fail(f"{value!r}: {error.message}", param, ctx)
        if "/" in name or name.startswith("!"):
            self.fail(f"{value!r}: an alias is one URI segment", param, ctx)
        return (name, key)


class _Group(click.Group):
    """The root group: expected errors of any subcommand print as ``error: <message>``;
    ``explain`` (set by :mod:`proxy.cli.main`: :func:`proxy.cli.diagnose.explain`) may say more
    than an error's message."""

    explain: Callable[[BusError, Settings, click.Context], str] | None = None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseExceptionGroup as group:
            raise _expected(group, ctx) from None
        except (BusError, OSError) as error:
            raise _expected(error, ctx) from None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _expected(error: BaseException, ctx: click.Context) -> BaseException:
    """Turn expected failures into :class:`CliError`; anything else is a bug and stays as is."""
    leaves = _leaves(error)
    if len(leaves) != 1:
        return error
    leaf = leaves[0]
    if isinstance(leaf, KeyboardInterrupt | click.ClickException | click.exceptions.Exit):
        return leaf
    if isinstance(leaf, OSError) and not isinstance(leaf, ConnectionError | TimeoutError):
        where = f"{leaf.filename}: " if leaf.filename else ""
        return CliError(f"{where}{leaf.strerror or leaf}")
    if not isinstance(leaf, BusError):
        return error
    message = leaf.message
    settings = ctx.obj
    explain = getattr(ctx.find_root().command, "explain", None)
    if isinstance(settings, Settings) and explain is not None:
        message = explain(leaf, settings, ctx)
    if isinstance(settings, Settings) and settings.verbose and leaf.details:
        facts = "".join(f"\n  {key}: {value}" for key, value in sorted(leaf.details.items()))
        message = f"{message} [{leaf.code}]{facts}"
    return CliError(message)


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


EXIT_STATUS = (
    "Exit status: 0 done; 1 a failure, printed as 'error: <message>' on stderr; 2 a usage "
    "error (an unknown, missing or malformed option or argument), printed with the usage "
    "as 'Error: <message>'."
)


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_STATUS
)
@click.option(
    "--bus",
    "bus_url",
    envvar="MODELBUS_BUS",
    default=DEFAULT_BUS,
    show_default=True,
    help="Bus URL: zmq://host:port, mqtt://host:port or memory://name.  [env: MODELBUS_BUS]",
)
@click.option(
    "--entity",
    "entity_path",
    envvar="MODELBUS_ENTITY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Entity file that signs (from 'modelbus keys new').  [env: MODELBUS_ENTITY]",
)
@click.option(
    "--proof",
    "proof_paths",
    envvar="MODELBUS_PROOF",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Grant chain file the entity presents; repeatable.  [env: MODELBUS_PROOF, "
    f"separated by {os.pathsep!r}]",
)
@click.option(
    "--alias",
    "aliases",
    envvar="MODELBUS_ALIASES",
    multiple=True,
    type=_Alias(),
    help="Namespace alias NAME=KEY; repeatable.  [env: MODELBUS_ALIASES, comma-separated]",
)
@click.option("-v", "--verbose", count=True, help="Log more (-vv: debug); error details.")
@click.version_option(package_name="modelbus")
@click.pass_context
def main(
    ctx: click.Context,
    bus_url: str,
    entity_path: Path | None,
    proof_paths: tuple[Path, ...],
    aliases: tuple[tuple[str, str], ...],
    verbose: int,
) -> None:
    """modelbus: predictive models on a signed publish/subscribe bus."""
    try:
        ctx.obj = Settings(
            bus_url=bus_url,
            entity_path=entity_path,
            proof_paths=proof_paths,
            aliases=dict(aliases),
            verbose=verbose,
        )
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    _configure_logging(verbose)
    logger.debug("settings: %s", ctx.obj)


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unprintable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
