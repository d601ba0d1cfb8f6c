"""Grant errors name what to fix: the proof files and what they cover, the namespace asked for,
the grant that would allow it, and the ``--ttl`` a refused re-delegation was made with. The
commands run in-process on a memory bus (the refusals come before anything is sent)."""

from __future__ import annotations

import time
from pathlib import Path

from bus import Entity, Grant, encode_chain
from tests.proxy.cli.test_main import DAY_NS, World, invoke, world

__all__ = ["world"]  # the fixture, imported for these tests


def test_a_proof_for_another_namespace_is_named_with_what_it_covers(world: World) -> None:
    other = Entity.generate()
    env = {**world.env(), "MODELBUS_ALIASES": f"ns={world.ns.key_text},other={other.key_text}"}
    result = invoke("status", "other/*", env=env)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"error: no proof you present is for the namespace asked for ({other.key_text} (alias "
        "other)); the bus said: the proof is for another namespace"
    )
    assert lines[1] == f"  asked for:  {other.key_text}/*"
    assert lines[2] == f"  namespace:  {other.key_text} (alias other)"
    assert lines[3].startswith(
        f"  proof:      {world.path('alice.grant')}: namespace {world.ns.key_text} (alias ns), "
        f"C*PL on {world.ns.key_text}/buildings/*: valid until "
    )
    assert lines[4] == "  ask the namespace's owner for a grant, e.g.:"
    assert lines[5] == (
        f"    modelbus grant --from OWNER.key --to {world.alice.key_text} "
        f"--uri '{other.key_text}/*' --perms C*P --expires 30d -o you.grant"
    )


def test_an_expired_proof_for_an_unrelated_namespace_is_not_blamed_alone(
    world: World, tmp_path: Path
) -> None:
    now = time.time_ns()
    stale = Grant.create(
        world.ns,
        world.alice.public_key,
        f"{world.ns.key_text}/*",
        "C*P",
        ttl=0,
        expires_ns=now - 2 * DAY_NS,
        created_ns=now - 3 * DAY_NS,
    )
    world.path("stale.grant").write_bytes(encode_chain([stale]))
    other = Entity.generate()
    (tmp_path / "m.py").write_text("def f(inputs):\n    return inputs\n")
    env = {
        **world.env(),
        "MODELBUS_PROOF": str(world.path("stale.grant")),
        "MODELBUS_CACHE": str(tmp_path / "cache"),
    }
    result = invoke(
        "deploy", "m", "1", "--function", f"{tmp_path / 'm.py'}:f", "--service", other.key_text,
        env=env,
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"error: no proof you present is for the namespace asked for ({other.key_text}); "
        "the bus said: grant 0 of the proof has expired"
    )
    assert lines[1] == f"  asked for:  {other.key_text}/s.modelbus/_"
    assert lines[3] == (
        f"  proof:      {world.path('stale.grant')}: namespace {world.ns.key_text} (alias ns), "
        f"C*P on {world.ns.key_text}/*: EXPIRED 2 days ago"
    )
    assert lines[5] == (
        f"    modelbus grant --from OWNER.key --to {world.alice.key_text} "
        f"--uri '{other.key_text}/s.modelbus/_/*' --perms C*P --expires 30d -o you.grant"
    )


def test_an_expired_proof_for_the_namespace_asked_for_keeps_the_bus_message(
    world: World,
) -> None:
    now = time.time_ns()
    stale = Grant.create(
        world.ns,
        world.alice.public_key,
        f"{world.ns.key_text}/*",
        "C*P",
        ttl=0,
        expires_ns=now - DAY_NS // 2,
        created_ns=now - DAY_NS,
    )
    world.path("stale.grant").write_bytes(encode_chain([stale]))
    env = {**world.env(), "MODELBUS_PROOF": str(world.path("stale.grant"))}
    result = invoke("query", "ns/buildings/*", env=env)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error: grant 0 of the proof has expired"
    assert lines[3].endswith(": EXPIRED 12 hours ago")
    assert "ask the namespace's owner" not in result.stderr


def test_without_any_proof_the_grant_to_ask_for_is_named(world: World) -> None:
    result = invoke("sub", "ns/buildings/*", "--timeout", "1", env=world.env("mallory.key"))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: none of the 0 grant chains this entity holds")
    assert "  proofs:     none (give them with --proof FILE or MODELBUS_PROOF)" in lines
    assert lines[-1] == (
        f"    modelbus grant --from OWNER.key --to {world.mallory.key_text} "
        f"--uri '{world.ns.key_text}/buildings/*' --perms C* --expires 30d -o you.grant"
    )


def test_a_refused_re_delegation_names_the_ttl_it_was_made_with(world: World) -> None:
    invoke("keys", "new", str(world.path("bob.key")))
    result = invoke(
        "grant", "--from", str(world.path("ns.key")), "--to", str(world.path("alice.key")),
        "--uri", "ns/x/*", "--perms", "C", "-o", str(world.path("t0.grant")),
        env=world.env(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    again = invoke(
        "grant", "--from", str(world.path("alice.key")), "--to", str(world.path("bob.key")),
        "--uri", "ns/x/*", "--perms", "C", "--proof", str(world.path("t0.grant")),
        "-o", str(world.path("bob.grant")),
        env=world.env(),
    )  # fmt: skip
    assert again.exit_code == 1
    assert again.stderr == (
        "error: grant 0 allows 0 re-delegations; the proof has 1 after it\n"
        "  grant 0 was made with --ttl 0: its receiver may not re-delegate it; ask its giver "
        "for a grant made with a larger --ttl\n"
    )
