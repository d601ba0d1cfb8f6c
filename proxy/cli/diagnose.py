"""Grant errors that say what to fix: which proof files were presented, what they cover, what
was asked for, and the grant that would allow it.

The bus raises the first reason one chain fails (``the proof is for another namespace``,
``grant 0 of the proof has expired``) without knowing the files the chains came from, so a
proof for an unrelated namespace can be blamed for expiring. :func:`explain` adds, below such an
error, one line per ``--proof`` file (its namespace, rights, pattern and whether it is valid
now), the URI the command asked for (declared with :func:`asking`), and — when no proof covers
that namespace — the ``modelbus grant`` line its owner would run, in the pattern that
``modelbus serve`` prints. A re-delegation refused for its TTL names the ``--ttl`` it was made
with.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from bus import (
    BrokenChain,
    BusError,
    GrantExpired,
    OutOfScope,
    PermissionMissing,
    TtlExceeded,
    UntrustedRoot,
    key_to_text,
)
from bus import uri as uris
from bus.entity import public_key_of
from bus.grants import check_chain, load_chain
from container_manager.service import DEFAULT_SERVICE_PATH
from proxy.cli.root import Settings, format_time_ns, relative_time

__all__ = ["asking", "explain"]

ABOUT_PROOFS = (
    UntrustedRoot,
    BrokenChain,
    GrantExpired,
    TtlExceeded,
    PermissionMissing,
    OutOfScope,
)
_ASKED = "modelbus.asked"
_TTL = re.compile(r"^grant (\d+) allows (\d+) re-delegations")


def asking(uri: str) -> None:
    """Declare the (canonical) URI or pattern this command acts on, for :func:`explain` (kept
    in the root click context's ``meta``: one invocation's)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_ASKED] = uri


def explain(error: BusError, settings: Settings, ctx: click.Context) -> str:
    """``error``'s message, with what the user needs to fix it when it is about grants."""
    if not isinstance(error, ABOUT_PROOFS):
        return error.message
    headline, lines = error.message, []
    ttl = _TTL.match(error.message)
    if isinstance(error, TtlExceeded) and ttl is not None:
        index, allowed = ttl.groups()
        may = (
            "its receiver may not re-delegate it"
            if allowed == "0"
            else f"at most {allowed} re-delegation{'' if allowed == '1' else 's'} may follow it"
        )
        lines.append(
            f"  grant {index} was made with --ttl {allowed}: {may}; ask its giver for a grant "
            "made with a larger --ttl"
        )
    asked: str | None = ctx.find_root().meta.get(_ASKED)
    if asked is None:
        return "\n".join([headline, *lines])
    namespace = uris.namespace_of(asked)
    lines.append(f"  asked for:  {asked}")
    lines.append(f"  namespace:  {namespace}{_alias_of(namespace, settings)}")
    if not settings.proof_paths:
        lines.append("  proofs:     none (give them with --proof FILE or MODELBUS_PROOF)")
    covering = []
    now_ns = time.time_ns()
    for path in settings.proof_paths:
        text, covered = _proof_line(path, namespace, settings, now_ns=now_ns)
        lines.append(f"  proof:      {text}")
        covering += [path] if covered else []
    if not covering and settings.proof_paths:  # the bus blamed a proof for another namespace
        headline = (
            f"no proof you present is for the namespace asked for "
            f"({namespace}{_alias_of(namespace, settings)}); the bus said: {error.message}"
        )
    if not covering or isinstance(error, OutOfScope | PermissionMissing):
        lines.append("  ask the namespace's owner for a grant, e.g.:")
        lines.append(f"    {_grant_line(asked, settings, error.details.get('needed'))}")
    return "\n".join([headline, *lines])


def _proof_line(path: Path, namespace: str, settings: Settings, *, now_ns: int) -> tuple[str, bool]:
    """``FILE: namespace N, RIGHTS on PATTERN, state`` and whether it is for ``namespace``."""
    try:
        chain = load_chain(path)
    except BusError as error:
        return f"{path}: unreadable: {error.message}", False
    if not chain:
        return f"{path}: an empty chain", False
    theirs = key_to_text(chain[0].namespace)
    head = f"{path}: namespace {theirs}{_alias_of(theirs, settings)}, "
    head += f"{chain[-1].permissions} on {chain[-1].pattern}"
    expired = [grant for grant in chain if now_ns >= grant.expires_ns]
    if expired:
        first = min(grant.expires_ns for grant in expired)
        state = f"EXPIRED {relative_time((first - now_ns) / 1e9)}"
    else:
        try:
            verdict = check_chain(chain, now_ns=now_ns)
            state = f"valid until {format_time_ns(verdict.expires_ns)}"
        except BusError as error:
            state = f"INVALID ({error.code}): {error.message}"
    return f"{head}: {state}", theirs == namespace


def _alias_of(key: str, settings: Settings) -> str:
    names = [name for name, value in sorted(settings.aliases.items()) if value == key]
    return f" (alias {', '.join(names)})" if names else ""


def _grant_line(asked: str, settings: Settings, needed: object) -> str:
    """The grant ``modelbus serve`` prints, for the service the asked URI is under (if it is
    one), else for the asked URI itself."""
    namespace, _, rest = asked.partition("/")
    service_path = DEFAULT_SERVICE_PATH
    if rest.startswith(service_path + "/") or rest == service_path:
        pattern, perms = f"{namespace}/{service_path}/*", "C*P"
    else:
        pattern, perms = asked, needed if isinstance(needed, str) else "C*P"
    receiver = "YOUR.key"
    if settings.entity_path is not None:
        try:
            receiver = key_to_text(public_key_of(str(settings.entity_path)))
        except BusError:
            receiver = str(settings.entity_path)
    return (
        f"modelbus grant --from OWNER.key --to {receiver} --uri '{pattern}' "
        f"--perms {perms} --expires 30d -o you.grant"
    )
