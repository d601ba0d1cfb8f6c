"""``modelbus keys`` and ``modelbus grant``: entity files and grant chain files.

An entity file (``keys new``) holds an Ed25519 key pair, mode 0600; nothing here ever prints its
secret seed. A namespace is just an entity: its public key is the first segment of its URIs.
A grant file is a *chain* file (:func:`bus.encode_chain`), root first: ``grant`` without
``--proof`` writes a one-grant chain from the namespace key; with ``--proof parent.grant`` it
appends a re-delegation to the parent chain, after checking that the parent allows it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import click

from bus import (
    BusError,
    Entity,
    Grant,
    Permissions,
    UntrustedRoot,
    encode_chain,
    key_from_text,
    key_to_text,
    public_key_of,
)
from bus import uri as uris
from bus.grants import MAX_CHAIN, check_chain
from proxy.cli.root import (
    CliError,
    Settings,
    format_time_ns,
    pass_settings,
    read_chain,
    relative_time,
)

__all__ = ["grant", "keys", "parse_expiry"]

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_S = (7 * 86400, 86400, 3600, 60, 1)


def parse_expiry(text: str, *, now_ns: int) -> int:
    """``30d``, ``12h``, ``45m``, ``10s`` (combinable: ``1d12h``, also ``2w``) from now, or an
    absolute ISO-8601 date or time (UTC unless it says otherwise); returns ns since the epoch."""
    match = _DURATION.fullmatch(text.strip())
    if text.strip() and match is not None:
        seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_S, strict=True) if n)
        if seconds <= 0:
            raise ValueError("a duration must be longer than 0 s")
        return now_ns + seconds * 1_000_000_000
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30d, 12h, 45m, 10s) nor an ISO date "
            "(2027-01-31 or 2027-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    expires_ns = int(when.timestamp()) * 1_000_000_000
    if expires_ns <= now_ns:
        raise ValueError(f"{text!r} is in the past")
    return expires_ns


class _Expiry(click.ParamType[int]):
    name = "DURATION|DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_expiry(str(value), now_ns=time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# ---- keys ------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Make and inspect entity files (Ed25519 key pairs)."""


@keys.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--comment", default="", help="A note kept in the file (who or what it is).")
def keys_new(path: Path, comment: str) -> None:
    """Make a new entity and write it to PATH (mode 0600; never overwrites)."""
    entity = Entity.generate(comment=comment)
    try:
        entity.save(path)
    except FileExistsError:
        raise CliError(
            f"{path} already exists; refusing to overwrite an entity file (its secret key "
            "would be lost)"
        ) from None
    click.echo(f"wrote {path} (mode 0600; keep it secret)")
    click.echo(f"public key: {entity.key_text}")


@keys.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key-only", is_flag=True, help="Print only the public key (for scripts).")
def keys_show(path: Path, key_only: bool) -> None:
    """Show an entity file's public key, comment and creation time (never the secret)."""
    entity = Entity.load(path)
    if key_only:
        click.echo(entity.key_text)
        return
    click.echo(f"public key: {entity.key_text}")
    click.echo(f"comment:    {entity.comment}")
    click.echo(f"created:    {_created_of(path)}")


def _created_of(path: Path) -> str:
    """The ``created`` field of an entity file (Entity does not keep it)."""
    document = json.loads(path.read_text())
    created = document.get("created") if isinstance(document, dict) else None
    return str(created) if created else "unknown"


# ---- grant -----------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.option(
    "--from",
    "giver_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Entity file of the giver (the namespace key, or the holder of --proof). "
    "Default: the root --entity.",
)
@click.option("--to", "receiver", metavar="KEY|FILE", help="The receiver's public key or file.")
@click.option("--uri", "uri", metavar="PATTERN", help="URI pattern granted, e.g. 'ns/bldg/*'.")
@click.option("--perms", metavar="PERMS", help="Permissions: C, C+, C*, P, L (e.g. C*P).")
@click.option(
    "--expires",
    "expires_ns",
    type=_Expiry(),
    default="30d",
    show_default=True,
    help="Lifetime (30d, 12h, 45m, 10s) or an ISO date.",
)
@click.option(
    "--ttl",
    type=click.IntRange(0, MAX_CHAIN),
    default=0,
    show_default=True,
    help="How many more times the receiver may re-delegate.",
)
@click.option(
    "--proof",
    "parent_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Parent chain file granted to --from; the new grant re-delegates it.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
@pass_settings
def grant(
    settings: Settings,
    ctx: click.Context,
    giver_path: Path | None,
    receiver: str | None,
    uri: str | None,
    perms: str | None,
    expires_ns: int,
    ttl: int,
    parent_path: Path | None,
    output: Path | None,
) -> None:
    """Grant an entity permissions on a URI pattern; writes a chain file (-o).

    The URI's first segment is a namespace key, an alias (--alias NAME=KEY before the command,
    or MODELBUS_ALIASES) or, for a root grant without --proof, any name for the giver's own
    namespace. 'modelbus grant show FILE' explains a chain file.
    """
    if ctx.invoked_subcommand is not None:
        return
    given = {"--to": receiver, "--uri": uri, "--perms": perms, "-o/--output": output}
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or a subcommand: show)")
    assert receiver is not None and uri is not None and perms is not None and output is not None
    giver = Entity.load(giver_path) if giver_path is not None else settings.entity()
    parent = read_chain(parent_path) if parent_path is not None else ()
    pattern = _granted_pattern(settings, uri, giver, has_parent=bool(parent))
    now_ns = time.time_ns()
    new = Grant.create(
        giver,
        public_key_of(receiver),
        pattern,
        perms,
        ttl=ttl,
        expires_ns=expires_ns,
        created_ns=now_ns,
    )
    chain = (*parent, new)
    _check_delegation(chain, now_ns=now_ns)
    output.write_bytes(encode_chain(chain))
    click.echo(f"wrote {output}: a chain of {len(chain)} grant{'s' if len(chain) > 1 else ''}")
    click.echo(f"  pattern:     {pattern}")
    click.echo(f"  permissions: {new.permissions}   ttl: {ttl}")
    click.echo(f"  receiver:    {key_to_text(new.receiver)}")
    click.echo(f"  expires:     {_expiry_text(expires_ns, now_ns)}")


def _granted_pattern(settings: Settings, uri: str, giver: Entity, *, has_parent: bool) -> str:
    namespace, sep, rest = uri.partition("/")
    if len(namespace) == 43:
        key_from_text(namespace)
        return uri
    if namespace in settings.aliases or has_parent:
        return settings.canonical(uri)
    return f"{giver.key_text}{sep}{rest}"


def _check_delegation(chain: tuple[Grant, ...], *, now_ns: int) -> None:
    """Refuse to write a chain that would not verify, or a grant wider than its parent."""
    new = chain[-1]
    if len(chain) == 1:
        if new.giver != new.namespace:
            raise UntrustedRoot(
                f"{key_to_text(new.giver)} (--from) does not own the namespace "
                f"{key_to_text(new.namespace)}; granting there needs --proof, a chain from the "
                "namespace owner to --from",
            )
    else:
        parent = check_chain(chain[:-1], now_ns=now_ns)
        if parent.receiver != new.giver:
            raise UntrustedRoot(
                f"the --proof chain was granted to {key_to_text(parent.receiver)}, not to the "
                f"giver {key_to_text(new.giver)} (--from)"
            )
        for right in sorted(new.permissions.rights):
            parent.authorize(new.giver, new.pattern, right, now_ns=now_ns)
    check_chain(chain, now_ns=now_ns)


def _expiry_text(expires_ns: int, now_ns: int) -> str:
    delta_s = (expires_ns - now_ns) / 1e9
    when = relative_time(delta_s) if delta_s > 0 else f"EXPIRED {relative_time(delta_s)}"
    return f"{format_time_ns(expires_ns)} ({when})"


@grant.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def grant_show(path: Path) -> None:
    """Explain a chain file, grant by grant, and say whether it verifies now (exit 1 if not)."""
    chain = read_chain(path)
    now_ns = time.time_ns()
    click.echo(f"{path}: a chain of {len(chain)} grant{'s' if len(chain) != 1 else ''}")
    for index, item in enumerate(chain):
        namespace = item.namespace
        click.echo(f"grant {index}")
        click.echo(f"  giver:       {_who(item.giver, namespace)}")
        click.echo(f"  receiver:    {_who(item.receiver, namespace)}")
        click.echo(f"  pattern:     {item.pattern}")
        click.echo(f"  permissions: {_describe(item.permissions)}")
        click.echo(f"  ttl:         {item.ttl} ({_ttl_text(item.ttl)})")
        click.echo(f"  created:     {format_time_ns(item.created_ns)}")
        click.echo(f"  expires:     {_expiry_text(item.expires_ns, now_ns)}")
    try:
        verdict = check_chain(chain, now_ns=now_ns)
    except BusError as error:
        click.echo(f"verdict: INVALID ({error.code}): {error.message}")
        raise click.exceptions.Exit(1) from None
    click.echo(
        f"verdict: valid: {key_to_text(verdict.receiver)} may {verdict.permissions} on "
        f"{_scope(verdict.patterns)} until {_expiry_text(verdict.expires_ns, now_ns)}"
    )


def _scope(patterns: tuple[str, ...]) -> str:
    """The last pattern when every earlier one contains it, else all of them."""
    if all(uris.contains(outer, patterns[-1]) for outer in patterns):
        return patterns[-1]
    return "URIs matching all of " + ", ".join(dict.fromkeys(patterns))


def _ttl_text(ttl: int) -> str:
    if ttl == 0:
        return "the receiver may not re-delegate"
    return f"the receiver may re-delegate {ttl} more time{'s' if ttl > 1 else ''}"


def _who(key: bytes, namespace: bytes) -> str:
    return key_to_text(key) + (" (namespace key)" if key == namespace else "")


def _describe(permissions: Permissions) -> str:
    names = {"C": "consume", "C+": "consume +", "C*": "consume *", "P": "publish", "L": "list"}
    rights = [names[right] for right in ("C", "C+", "C*", "P", "L") if permissions.has(right)]
    return f"{permissions} ({', '.join(rights) or 'nothing'})"
