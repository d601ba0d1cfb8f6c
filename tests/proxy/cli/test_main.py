"""The ``modelbus`` command line, run for real: CliRunner for the offline commands, and the
command as a subprocess against a real ZeroMQ forwarder for pub, sub, query, status and bus.

Covers proxy/cli/main.py, proxy/cli/root.py, proxy/cli/bus.py, proxy/cli/keys.py and
proxy/cli/demo.py with proxy/bench/demo.py (the demo, run end to end).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import anyio
import click
import click.testing
import pytest

from bus import (
    BusClient,
    Entity,
    Grant,
    Heartbeat,
    decode_chain,
    encode_chain,
)
from bus import envelope as envelopes
from bus.grants import check_chain
from proxy.cli.keys import parse_expiry
from proxy.cli.root import main
from tests.fixtures.ports import free_port_block
from transports import open_transport

DAY_NS = 86_400 * 10**9
SUBPROCESS_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class World:
    """A namespace, its owner's grant to alice (C*PL on ns/buildings/*, ttl 1), and mallory,
    who holds no grant. ``env`` points the command at them (the bus URL is added per test)."""

    dir: Path
    ns: Entity
    alice: Entity
    mallory: Entity

    def path(self, name: str) -> Path:
        return self.dir / name

    def env(self, entity: str = "alice.key", *, bus_url: str = "memory://cli") -> dict[str, str]:
        """The environment for running as ``entity`` (alice presents her grant)."""
        env = {
            "MODELBUS_BUS": bus_url,
            "MODELBUS_ENTITY": str(self.path(entity)),
            "MODELBUS_ALIASES": f"ns={self.ns.key_text}",
        }
        if entity == "alice.key":
            env["MODELBUS_PROOF"] = str(self.path("alice.grant"))
        return env


def environ(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without MODELBUS_* settings, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUS_")}
    return {**base, **env}


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    """Run the root group in-process, as a shell would (exit codes, stdout and stderr apart)."""
    clean = {name: None for name in os.environ if name.startswith("MODELBUS_")}
    runner = click.testing.CliRunner(env={**clean, **(env or {})})
    return runner.invoke(main, list(args), catch_exceptions=False)


def secret_of(path: Path) -> str:
    return str(json.loads(path.read_text())["secret_seed"])


@pytest.fixture
def world(tmp_path: Path) -> World:
    for name in ("ns", "alice", "mallory"):
        assert invoke("keys", "new", str(tmp_path / f"{name}.key")).exit_code == 0
    granted = invoke(
        "grant",
        "--from", str(tmp_path / "ns.key"),
        "--to", str(tmp_path / "alice.key"),
        "--uri", "ns/buildings/*",
        "--perms", "C*PL",
        "--ttl", "1",
        "-o", str(tmp_path / "alice.grant"),
    )  # fmt: skip
    assert granted.exit_code == 0, granted.output
    entities = [Entity.load(tmp_path / f"{name}.key") for name in ("ns", "alice", "mallory")]
    return World(tmp_path, *entities)


# ---- keys ------------------------------------------------------------------------------------


def test_keys_new_writes_a_private_file_and_show_never_prints_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    made = invoke("keys", "new", str(path), "--comment", "alice's laptop")
    assert made.exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entity = Entity.load(path)
    shown = invoke("keys", "show", str(path))
    assert shown.exit_code == 0
    assert f"public key: {entity.key_text}" in shown.stdout
    assert "alice's laptop" in shown.stdout
    created = shown.stdout.split("created:")[1].strip()
    assert abs(dt.datetime.fromisoformat(created).timestamp() - time.time()) < 60
    assert invoke("keys", "show", str(path), "--key-only").stdout == entity.key_text + "\n"
    seed = secret_of(path)
    for result in (made, shown):
        assert seed not in result.output


def test_keys_new_refuses_to_overwrite_an_entity(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    assert invoke("keys", "new", str(path)).exit_code == 0
    before = path.read_bytes()
    again = invoke("keys", "new", str(path))
    assert again.exit_code == 1
    assert again.stderr.startswith("error: ")
    assert "refusing to overwrite" in again.stderr
    assert path.read_bytes() == before


def test_keys_show_of_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = invoke("keys", "show", str(tmp_path / "nobody.key"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read entity file")
    assert "Traceback" not in result.output


def test_a_key_file_others_may_read_is_refused_with_the_chmod_that_fixes_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alice.key"
    assert invoke("keys", "new", str(path)).exit_code == 0
    path.chmod(0o644)
    result = invoke("keys", "show", str(path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path} holds a secret key and others may read it (mode 0644); refusing to use "
        f"it: run chmod 600 {path}\n"
    )
    path.chmod(0o600)
    assert invoke("keys", "show", str(path)).exit_code == 0


# ---- grant -----------------------------------------------------------------------------------


def test_root_grant_names_the_givers_namespace_and_writes_a_valid_chain(world: World) -> None:
    chain = decode_chain(world.path("alice.grant").read_bytes())
    assert len(chain) == 1
    (grant,) = chain
    assert grant.giver == world.ns.public_key
    assert grant.receiver == world.alice.public_key
    assert grant.pattern == f"{world.ns.key_text}/buildings/*"
    assert str(grant.permissions) == "C*PL"
    assert grant.ttl == 1
    assert abs(grant.expires_ns - (time.time_ns() + 30 * DAY_NS)) < 60 * 10**9
    verdict = check_chain(chain, now_ns=time.time_ns())
    assert verdict.receiver == world.alice.public_key


def test_grant_prints_the_canonical_pattern_and_accepts_a_key_as_receiver(world: World) -> None:
    result = invoke(
        "grant",
        "--from", str(world.path("ns.key")),
        "--to", world.mallory.key_text,
        "--uri", "anything/weather/+/temp",
        "--perms", "C",
        "--expires", "12h",
        "-o", str(world.path("m.grant")),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"pattern:     {world.ns.key_text}/weather/+/temp" in result.stdout
    (grant,) = decode_chain(world.path("m.grant").read_bytes())
    assert grant.receiver == world.mallory.public_key
    assert abs(grant.expires_ns - (time.time_ns() + DAY_NS // 2)) < 60 * 10**9


def test_grant_show_explains_a_valid_chain(world: World) -> None:
    result = invoke("grant", "show", str(world.path("alice.grant")))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "grant 0" in lines
    assert f"  giver:       {world.ns.key_text} (namespace key)" in lines
    assert f"  receiver:    {world.alice.key_text}" in lines
    assert f"  pattern:     {world.ns.key_text}/buildings/*" in lines
    assert any(line.startswith("  permissions: C*PL") for line in lines)
    assert any(line.startswith("  ttl:         1") for line in lines)
    assert any(line.startswith("  expires:") and "(in 29 days)" in line for line in lines)
    assert lines[-1].startswith(f"verdict: valid: {world.alice.key_text} may C*PL on ")
    assert secret_of(world.path("ns.key")) not in result.output


def test_grant_show_of_an_expired_chain_says_expired_and_exits_1(world: World) -> None:
    now_ns = time.time_ns()
    old = Grant.create(
        world.ns,
        world.alice.public_key,
        f"{world.ns.key_text}/buildings/*",
        "C",
        ttl=0,
        expires_ns=now_ns - 2 * DAY_NS,
        created_ns=now_ns - 32 * DAY_NS,
    )
    world.path("old.grant").write_bytes(encode_chain([old]))
    result = invoke("grant", "show", str(world.path("old.grant")))
    assert result.exit_code == 1
    assert "EXPIRED 2 days ago" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "verdict: INVALID (grant_expired): grant 0 of the proof has expired"
    )


def test_redelegation_with_proof_respects_ttl_and_scope(world: World) -> None:
    bob = world.path("bob.key")
    carol = world.path("carol.key")
    invoke("keys", "new", str(bob))
    invoke("keys", "new", str(carol))
    env = world.env()
    delegated = invoke(
        "grant", "--from", str(world.path("alice.key")), "--to", str(bob),
        "--uri", "ns/buildings/a/*", "--perms", "C*", "--proof", str(world.path("alice.grant")),
        "-o", str(world.path("bob.grant")),
        env=env,
    )  # fmt: skip
    assert delegated.exit_code == 0, delegated.output
    chain = decode_chain(world.path("bob.grant").read_bytes())
    assert [g.receiver for g in chain] == [world.alice.public_key, Entity.load(bob).public_key]
    verdict = check_chain(chain, now_ns=time.time_ns())
    assert str(verdict.permissions) == "C*"
    shown = invoke("grant", "show", str(world.path("bob.grant")))
    assert shown.exit_code == 0
    assert f"may C* on {world.ns.key_text}/buildings/a/* until" in shown.stdout

    # alice's grant had ttl 1: bob (ttl 0) may not pass it on
    too_deep = invoke(
        "grant", "--from", str(bob), "--to", str(carol), "--uri", "ns/buildings/a/*",
        "--perms", "C", "--proof", str(world.path("bob.grant")), "-o", str(world.path("c.grant")),
        env=env,
    )  # fmt: skip
    assert too_deep.exit_code == 1
    assert too_deep.stderr == (
        "error: grant 0 allows 1 re-delegations; the proof has 2 after it\n"
        "  grant 0 was made with --ttl 1: at most 1 re-delegation may follow it; ask its giver "
        "for a grant made with a larger --ttl\n"
    )
    assert not world.path("c.grant").exists()

    # nor may alice give more than she holds
    wider = invoke(
        "grant", "--from", str(world.path("alice.key")), "--to", str(bob),
        "--uri", "ns/other/*", "--perms", "C", "--proof", str(world.path("alice.grant")),
        "-o", str(world.path("w.grant")),
        env=env,
    )  # fmt: skip
    assert wider.exit_code == 1
    assert "is outside the granted" in wider.stderr
    stronger = invoke(
        "grant", "--from", str(bob), "--to", str(carol), "--uri", "ns/buildings/a/*",
        "--perms", "P", "--ttl", "0", "--proof", str(world.path("bob.grant")),
        "-o", str(world.path("p.grant")),
        env=env,
    )  # fmt: skip
    assert stronger.exit_code == 1
    assert "the proof does not grant 'P'" in stronger.stderr


def test_grant_in_another_namespace_needs_a_proof(world: World) -> None:
    result = invoke(
        "grant", "--from", str(world.path("alice.key")), "--to", str(world.path("mallory.key")),
        "--uri", "ns/buildings/*", "--perms", "C", "-o", str(world.path("x.grant")),
        env=world.env(),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "does not own the namespace" in result.stderr
    unknown_alias = invoke(
        "grant", "--from", str(world.path("alice.key")), "--to", str(world.path("mallory.key")),
        "--uri", "elsewhere/buildings/*", "--perms", "C",
        "--proof", str(world.path("alice.grant")), "-o", str(world.path("x.grant")),
    )  # fmt: skip
    assert unknown_alias.exit_code == 1
    assert "--alias elsewhere=KEY" in unknown_alias.stderr


def test_expiry_accepts_durations_and_iso_dates() -> None:
    now_ns = 1_800_000_000 * 10**9
    assert parse_expiry("30d", now_ns=now_ns) == now_ns + 30 * DAY_NS
    assert parse_expiry("12h", now_ns=now_ns) == now_ns + 12 * 3600 * 10**9
    assert parse_expiry("45m", now_ns=now_ns) == now_ns + 45 * 60 * 10**9
    assert parse_expiry("10s", now_ns=now_ns) == now_ns + 10 * 10**9
    assert parse_expiry("1d12h", now_ns=now_ns) == now_ns + 36 * 3600 * 10**9
    midnight = dt.datetime(2030, 1, 31, tzinfo=dt.UTC).timestamp()
    assert parse_expiry("2030-01-31", now_ns=now_ns) == int(midnight) * 10**9
    assert parse_expiry("2030-01-31T02:00:00+02:00", now_ns=now_ns) == int(midnight) * 10**9
    for bad in ("soon", "0s", "2020-01-01", ""):
        with pytest.raises(ValueError):
            parse_expiry(bad, now_ns=now_ns)


def test_a_bad_expiry_is_a_usage_error(world: World) -> None:
    result = invoke(
        "grant", "--from", str(world.path("ns.key")), "--to", world.alice.key_text,
        "--uri", "ns/x", "--perms", "C", "--expires", "next week", "-o", str(world.path("g")),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "neither a duration" in result.stderr
    assert not world.path("g").exists()


# ---- errors and the command table ------------------------------------------------------------


def test_the_help_names_the_exit_statuses_and_a_usage_error_exits_2() -> None:
    shown = invoke("--help")
    assert shown.exit_code == 0
    assert " ".join(shown.stdout.split()).endswith(
        "Exit status: 0 done; 1 a failure, printed as 'error: <message>' on stderr; 2 a usage "
        "error (an unknown, missing or malformed option or argument), printed with the usage as "
        "'Error: <message>'."
    )
    unknown = invoke("keys", "show", "--no-such-option")
    assert unknown.exit_code == 2
    assert unknown.stderr.splitlines()[-1].startswith("Error: No such option")


def test_a_signing_command_without_an_entity_says_how_to_get_one(world: World) -> None:
    env = {**world.env(), "MODELBUS_ENTITY": ""}
    result = invoke("pub", "ns/buildings/a", "hi", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: this command signs: pass --entity FILE")
    assert "modelbus keys new" in result.stderr


def test_publishing_without_a_grant_is_an_error_with_details_when_verbose(world: World) -> None:
    env = world.env("mallory.key")
    result = invoke("pub", "ns/buildings/a", "hi", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: none of the 0 grant chains this entity holds")
    assert "Traceback" not in result.output
    verbose = invoke("-v", "pub", "ns/buildings/a", "hi", env=env)
    assert "[permission_missing]" in verbose.stderr
    assert "  needed: P" in verbose.stderr
    assert secret_of(world.path("mallory.key")) not in verbose.output


def test_a_pattern_outside_the_grant_is_refused_before_subscribing(world: World) -> None:
    result = invoke("sub", "ns/other/*", "--timeout", "1", env=world.env())
    assert result.exit_code == 1
    assert f"'{world.ns.key_text}/other/*' is outside the granted" in result.stderr


def test_sub_timeout_is_an_error_only_when_count_was_not_reached(world: World) -> None:
    waited = invoke("sub", "ns/buildings/*", "--timeout", "0.5", env=world.env())
    assert waited.exit_code == 0, waited.output
    assert waited.stdout == ""
    short = invoke("sub", "ns/buildings/*", "--count", "2", "--timeout", "0.5", env=world.env())
    assert short.exit_code == 1
    assert short.stderr.splitlines()[-1] == (
        f"error: timed out after 0.5 s with 0 of 2 messages on {world.ns.key_text}/buildings/*"
    )


def test_an_unknown_namespace_alias_is_an_error(world: World) -> None:
    result = invoke("query", "nowhere/*", env=world.env())
    assert result.exit_code == 1
    assert "neither a 43-character key nor a known alias" in result.stderr


def test_a_file_that_is_no_chain_is_an_error(world: World) -> None:
    result = invoke("grant", "show", str(world.path("alice.key")))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {world.path('alice.key')} is not a grant chain file")


COMMANDS = {
    "apps", "bench", "bus", "containers", "dashboard", "demo", "deploy", "grant", "keys",
    "models", "predict", "pub", "query", "serve", "service-status", "status", "sub", "versions",
}  # fmt: skip


def test_every_command_is_attached_to_the_root_group() -> None:
    group = main
    assert isinstance(group, click.Group)
    with click.Context(group) as ctx:
        assert set(group.list_commands(ctx)) >= COMMANDS
        for name in group.list_commands(ctx):
            assert isinstance(group.get_command(ctx, name), click.Command), name


def test_a_command_loads_no_library_it_does_not_use() -> None:
    """Subcommands are ordinary imports now; the libraries only some of them use (paho, docker-py,
    the benchmarks' aiohttp) are still imported only when used."""
    probe = (
        "import sys\n"
        "from proxy.cli.root import main\n"
        "main(['keys', '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('paho', 'docker',"
        " 'aiohttp') or m in ('transports.mqtt', 'proxy.bench.bus')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    )
    assert result.stdout.splitlines()[-1] == "[]"


def test_the_console_script_is_the_root_group() -> None:
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "modelbus"]
    assert script.value == "proxy.cli:main"
    assert script.load() is main


# ---- against a real ZeroMQ bus ---------------------------------------------------------------


def modelbus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        env=environ(env),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


class Background:
    """A ``modelbus`` process whose stdout and stderr go to files (an unread pipe could block)."""

    def __init__(self, directory: Path, args: list[str], env: dict[str, str]) -> None:
        self.out = directory / f"out-{time.monotonic_ns()}.txt"
        self.err = self.out.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", *args],
                env=environ(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, text: str, *, in_stderr: bool = False) -> None:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while time.monotonic() < deadline:
            if text in (self.stderr if in_stderr else self.stdout):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"never saw {text!r}; stdout {self.stdout!r}, stderr {self.stderr!r}")

    def wait(self) -> int:
        return self.process.wait(timeout=SUBPROCESS_TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=SUBPROCESS_TIMEOUT_S)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for item in started:
        item.stop()


def start(
    started: list[Background], directory: Path, *args: str, env: dict[str, str]
) -> Background:
    item = Background(directory, list(args), env)
    started.append(item)
    return item


@pytest.mark.slow
def test_pub_to_sub_over_zeromq(
    world: World, zmq_bus_url: str, background: list[Background]
) -> None:
    env = world.env(bus_url=zmq_bus_url)
    uri = f"{world.ns.key_text}/buildings/a/temp"
    sub = start(background, world.dir, "sub", "ns/buildings/*", "--count", "3", env=env)
    sub.wait_for("subscribed to", in_stderr=True)
    assert modelbus("pub", "ns/buildings/a/temp", "21.5 C", env=env).returncode == 0
    assert modelbus("pub", "ns/buildings/a/temp", '{"x": 1}', "--json", env=env).returncode == 0
    packed = modelbus("pub", uri, '{"v": [1, 2]}', "--po", "2.0.0.0", env=env)
    assert packed.returncode == 0, packed.stderr
    assert sub.wait() == 0
    lines = sub.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        stamp, topic, origin = line.split(" ")[:3]
        assert abs(dt.datetime.fromisoformat(stamp).timestamp() - time.time()) < 60
        assert (topic, origin) == (uri, world.alice.key_text)
    assert lines[0].endswith(" 64.0.1.0 21.5 C")
    assert lines[1].endswith(' 65.0.0.0 {"x": 1}')
    assert lines[2].endswith(' 2.0.0.0 {"v": [1, 2]}')


@pytest.mark.slow
def test_sub_prints_rejected_for_a_frame_without_a_grant(
    world: World, zmq_bus_url: str, background: list[Background]
) -> None:
    env = world.env(bus_url=zmq_bus_url)
    uri = f"{world.ns.key_text}/buildings/a/door"
    sub = start(background, world.dir, "sub", "ns/buildings/*", "--count", "1", env=env)
    sub.wait_for("subscribed to", in_stderr=True)

    async def forge() -> None:
        transport = open_transport(zmq_bus_url)
        await transport.connect()
        try:
            frame = envelopes.seal(world.mallory, uri, [])
            await transport.publish(uri, frame)
        finally:
            await transport.close()

    anyio.run(forge, backend="asyncio")
    sub.wait_for("REJECTED")
    assert modelbus("pub", "ns/buildings/a/door", "open", env=env).returncode == 0
    assert sub.wait() == 0
    rejected, accepted = sub.stdout.splitlines()
    assert rejected == f"REJECTED {uri}: broken_chain: an empty proof grants nothing"
    assert accepted.endswith(f" {uri} {world.alice.key_text} 64.0.1.0 open")


@pytest.mark.slow
def test_persisted_messages_come_back_from_query_until_unpersisted(
    world: World, zmq_bus_url: str
) -> None:
    env = world.env(bus_url=zmq_bus_url)
    uri = f"{world.ns.key_text}/buildings/b/setpoint"
    assert modelbus("pub", "ns/buildings/b/setpoint", "22", "--persist", env=env).returncode == 0
    found = modelbus("query", "ns/buildings/*", env=env)
    assert found.returncode == 0, found.stderr
    (line,) = found.stdout.splitlines()
    assert line.endswith(f" {uri} {world.alice.key_text} 64.0.1.0 22")
    cleared = modelbus("pub", "ns/buildings/b/setpoint", "--unpersist", env=env)
    assert cleared.returncode == 0, cleared.stderr
    empty = modelbus("query", "ns/buildings/*", env=env)
    assert empty.returncode == 0
    assert empty.stdout == ""
    assert f"no persisted messages match {world.ns.key_text}/buildings/*" in empty.stderr


@pytest.mark.slow
async def test_status_shows_a_live_service_then_dead_after_it_stops(
    world: World, zmq_bus_url: str
) -> None:
    env = world.env(bus_url=zmq_bus_url)
    service = f"{world.ns.key_text}/buildings/s.thermal/_"
    heartbeat = Heartbeat(service, status=lambda: {"models": 3})
    command = [sys.executable, "-m", "proxy.cli", "status", "ns/buildings/*"]

    def row(output: bytes) -> list[str]:
        lines = output.decode().splitlines()
        assert lines[0].split() == ["SERVICE", "STATE", "REASON", "LASTALIVE", "SEQ", "STATUS"]
        (line,) = lines[1:]
        return line.split()

    async with BusClient(open_transport(zmq_bus_url), world.ns) as client:
        async with anyio.create_task_group() as task_group:
            await task_group.start(heartbeat.run, client)
            alive = await anyio.run_process(command, env=environ(env))
            task_group.cancel_scope.cancel()
        dead = await anyio.run_process(command, env=environ(env))
    columns = row(alive.stdout)
    assert columns[:3] == [service, "ALIVE", "alive"]
    assert columns[6] == str(heartbeat.seq)
    assert "models=3" in columns[7:]
    columns = row(dead.stdout)
    assert columns[:3] == [service, "DEAD", "died"]


@pytest.mark.mqtt
async def test_status_shows_each_instance_of_a_service(world: World, mosquitto_url: str) -> None:
    """Two named instances of one service: both listed under it; after one shuts down, the
    service stays alive and that instance reads dead."""
    env = world.env(bus_url=mosquitto_url)
    service = f"{world.ns.key_text}/buildings/s.thermal/_"
    first, second = (
        Heartbeat(service, instance=name, status=lambda: {"models": 3}) for name in "ab"
    )
    command = [sys.executable, "-m", "proxy.cli", "status", "ns/buildings/*"]

    def rows(output: bytes) -> list[list[str]]:
        lines = output.decode().splitlines()
        assert lines[0].split() == ["SERVICE", "STATE", "REASON", "LASTALIVE", "SEQ", "STATUS"]
        return [line.split() for line in lines[1:]]

    async with (
        BusClient(open_transport(mosquitto_url), world.ns) as one,
        BusClient(open_transport(mosquitto_url), world.ns) as two,
    ):
        await one.require_task_group().start(first.run, one)
        async with anyio.create_task_group() as task_group:
            await task_group.start(second.run, two)
            both = await anyio.run_process(command, env=environ(env))
            task_group.cancel_scope.cancel()  # b shuts down cleanly
        one_left = await anyio.run_process(command, env=environ(env))
    service_row, row_a, row_b = rows(both.stdout)
    assert service_row[:7] == [service, "ALIVE", "alive", "(2", "of", "2", "instances)"]
    assert row_a[:4] == ["└", "a", "ALIVE", "alive"] and str(first.seq) in row_a
    assert row_b[:4] == ["└", "b", "ALIVE", "alive"] and "models=3" in row_b
    service_row, row_a, row_b = rows(one_left.stdout)
    assert service_row[:7] == [service, "ALIVE", "alive", "(1", "of", "2", "instances)"]
    assert row_a[:4] == ["└", "a", "ALIVE", "alive"]
    assert row_b[:4] == ["└", "b", "DEAD", "died"] and str(second.seq) in row_b


def test_the_status_table_puts_instances_under_their_service() -> None:
    from bus.liveness.monitor import ServiceState
    from proxy.cli.bus import status_table

    now = time.time_ns()
    instances = (
        ServiceState("eu-1", True, "alive", now, 1, {"version": "0.1.0"}),
        ServiceState("eu-2", False, "died", now, 2, {}),
    )
    service = ServiceState("ns/s.a/_", True, "alive (1 of 2 instances)", now, None, {}, None)
    table = click.unstyle(
        status_table([dataclasses.replace(service, instances=instances)], now_ns=now)
    )
    _, first, second, third = table.splitlines()
    assert first.split()[:2] == ["ns/s.a/_", "ALIVE"]
    assert second.split()[:4] == ["└", "eu-1", "ALIVE", "alive"] and "version=0.1.0" in second
    assert second.startswith("  └ eu-1") and third.split()[:4] == ["└", "eu-2", "DEAD", "died"]


@pytest.mark.slow
def test_status_watch_refreshes_until_interrupted(
    world: World, zmq_bus_url: str, background: list[Background]
) -> None:
    env = world.env(bus_url=zmq_bus_url)
    watch = start(background, world.dir, "status", "ns/buildings/*", "--watch", env=env)
    empty = f"no services under {world.ns.key_text}/buildings/*"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while watch.stdout.count(empty) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watch.stdout.count(empty) >= 2, watch.stdout + watch.stderr
    watch.process.send_signal(signal.SIGINT)
    assert watch.wait() == 0
    assert "Traceback" not in watch.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_bus_serves_until_signalled_and_frees_its_ports(
    world: World, background: list[Background], stop_signal: signal.Signals
) -> None:
    port = free_port_block(3)
    url = f"zmq://127.0.0.1:{port}"
    hub = start(background, world.dir, "bus", "--listen", url, env={})
    hub.wait_for("press Ctrl-C to stop")
    for offset in range(3):
        assert f"tcp://127.0.0.1:{port + offset}" in hub.stdout
    assert f"serving {url}" in hub.stdout
    env = world.env("ns.key", bus_url=url)
    published = modelbus("pub", f"{world.ns.key_text}/x", "kept", "--persist", env=env)
    assert published.returncode == 0, published.stderr
    assert modelbus("query", f"{world.ns.key_text}/*", env=env).stdout.endswith(" kept\n")
    hub.process.send_signal(stop_signal)
    assert hub.wait() == 0
    assert hub.stdout.endswith("modelbus bus: stopped\n")
    assert "Traceback" not in hub.stderr
    for offset in range(3):  # nothing listens any more (TIME_WAIT leftovers are fine)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port + offset))
            sock.listen()


def test_bus_refuses_a_url_that_is_not_zeromq(world: World) -> None:
    result = invoke("bus", "--listen", "mqtt://127.0.0.1:1883")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 'modelbus bus' runs a ZeroMQ forwarder")


# ---- the README stays true -------------------------------------------------------------------

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_blocks(language: str) -> list[str]:
    text = README.read_text()
    return [block.split("```", 1)[0] for block in text.split(f"```{language}\n")[1:]]


def test_every_modelbus_command_in_the_readme_exists_with_its_options() -> None:
    lines = "\n".join(readme_blocks("sh")).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("modelbus ")]
    assert len(commands) >= 12
    for words in commands:
        command: click.Command = main
        with click.Context(main) as ctx:
            for word in words[1:]:
                if word.startswith("-"):
                    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
                    assert word.partition("=")[0] in known, f"{' '.join(words)}: {word}?"
                elif isinstance(command, click.Group) and word in command.list_commands(ctx):
                    found = command.get_command(ctx, word)
                    assert found is not None
                    command = found


@pytest.mark.slow
def test_the_readme_python_example_runs(world: World, zmq_bus_url: str) -> None:
    (example,) = [block for block in readme_blocks("python") if "anyio.sleep(60)" in block]
    assert "zmq://127.0.0.1:7700" in example
    example = example.replace("zmq://127.0.0.1:7700", zmq_bus_url).replace("sleep(60)", "sleep(0)")
    world.path("alice.grant").rename(world.path("alice-buildings.grant"))
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=world.dir,
        env=environ({}),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{{'twice': 42, 'asked_by': '{world.alice.key_text}'}}\n"


def test_the_demo_runs_end_to_end_on_the_embedded_bus(tmp_path: Path) -> None:
    """The README's first command: the service embeds its ZeroMQ bus (serve's default), deploys,
    predicts, upgrades, pins, rolls back, refuses a viewer's deploy, forecasts a day of zone A
    stitched from three models with a gap (proxy/bench/demo_forecast.py) and reads liveness."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "starting the service: embedded ZeroMQ bus" in out
    assert "thermal:1 → 48 steps" in out
    assert "viewer deploy refused: out_of_scope" in out
    liveness = out.split("== liveness, as a dashboard sees it, and the models as they are now")[1]
    lines = liveness.strip().splitlines()
    assert lines[0].split()[1:3] == ["ALIVE", "(alive),"]
    # the state as it is: both versions ready (1 has just answered, 2 answered before)
    assert lines[1:3] == [
        "  thermal:1 ready, 1 replica(s), 0 queued",
        "  thermal:2 ready, 1 replica(s), 0 queued",
    ]
    forecast = out[out.index("thermal, zone A, one day, 30 min") :].splitlines()
    assert "2018-01-30 08:00 PST" in forecast[2 + 16] and "zone-a-day:1" in forecast[2 + 16]
    assert forecast[2 + 36].endswith("gap: no usable model can predict this time")
    assert "48 points of 30min, 4 in gaps" in out
    assert "demo complete" in out


@pytest.mark.mqtt
def test_sub_never_prints_the_bus_password(world: World, mosquitto_url: str) -> None:
    host = mosquitto_url.removeprefix("mqtt://")
    url = f"mqtt://alice:s3cret-pw@{host}"  # the test broker takes anonymous and named clients
    result = invoke("sub", "ns/buildings/*", "--timeout", "0.5", env=world.env(bus_url=url))
    assert result.exit_code == 0, result.output
    assert f"on mqtt://alice:***@{host}" in result.stderr
    assert "s3cret-pw" not in result.output + result.stderr


def test_redacted_urls() -> None:
    from proxy.cli.root import redact_url

    assert redact_url("mqtt://u:p%40ss@broker:1883") == "mqtt://u:***@broker:1883"
    assert redact_url("mqtts://u:pw@[::1]:8883") == "mqtts://u:***@[::1]:8883"
    assert redact_url("mqtt://u@broker") == "mqtt://u@broker"
    assert redact_url("zmq://127.0.0.1:7700") == "zmq://127.0.0.1:7700"


def test_the_status_table_colours_each_state_for_a_terminal() -> None:
    from bus.liveness.monitor import ServiceState
    from proxy.cli.bus import status_table

    now = time.time_ns()
    states = [
        ServiceState("ns/s.a/_", True, "alive", now, 1, {}),
        ServiceState("ns/s.b/_", False, "stale (40 s)", now - 40 * 10**9, 2, {}),
        ServiceState("ns/s.c/_", False, "died", now, 3, {}),
    ]
    table = status_table(states, now_ns=now)
    assert click.style("ALIVE", fg="green", bold=True)[:5] in table  # the green escape
    assert "\x1b[31m" in table and "\x1b[33m" in table  # red for died, yellow for stale
    plain = click.unstyle(table).splitlines()
    assert [line.split()[1] for line in plain[1:]] == ["ALIVE", "DEAD", "DEAD"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --model, or --type with --context and --granularity"),
        (["--model", "m", "--type", "thermal"], "give --model, or --type"),
        (["--type", "thermal"], "--type needs --context and --granularity"),
    ],
)
def test_schedule_add_takes_a_model_or_a_forecast_query(args: list[str], message: str) -> None:
    common = ["--every", "1h", "--window", "1h", "--start", "0", "--output", "ns/x"]
    common += ["--service", "A" * 43]
    result = invoke("schedule", "add", "s", *common, *args)
    assert result.exit_code == 2
    assert message in result.output + result.stderr
