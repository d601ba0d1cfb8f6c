"""``modelbus deploy --link APP`` checks before it uploads, and reports a deploy that was done as
done; the deploy cache is kept only for an interrupted run (real service on Mosquitto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import BusClient, Heartbeat, NotFound
from container_manager import ServiceClient
from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_apps import unique
from tests.proxy.cli.test_deploy import as_operator, environment, invoke, model_file
from transports import open_transport

pytestmark = pytest.mark.mqtt

__all__ = ["model_file"]  # the fixture, imported for these tests


def registered(service: RunningService, name: str) -> list[Any]:
    return list(as_operator(service, lambda s: s.get_all_models(name=name)))


def test_linking_to_an_unknown_application_is_refused_before_the_upload(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name, app = unique("thermal"), unique("zone")
    args = ["deploy", name, "1", "--function", f"{model_file}:predict", "--link", app]
    result = invoke(*args, env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: no application named {app!r}: register it first (modelbus apps register {app} "
        f"--input-type doubles --service {service.owner.key_text}) or leave out --link; "
        "nothing was uploaded"
    )
    assert f"uploading {name}:1" not in result.stderr
    assert "interrupted" not in result.stderr
    assert registered(service, name) == []
    assert not any((tmp_path / "cache").iterdir())  # not an interrupted run: nothing kept


def test_an_application_of_another_input_type_or_model_is_refused_before_the_upload(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name, app = unique("thermal"), unique("zone")
    as_operator(service, lambda s: s.register_application(app, "strings", "-", 100_000))
    result = invoke(
        "deploy", name, "1", "--function", f"{model_file}:predict", "--link", app, env=env
    )
    assert result.exit_code == 1
    assert f"application {app!r} takes strings inputs, not doubles" in result.stderr
    assert registered(service, name) == []

    other, app2 = unique("other"), unique("zone")
    as_operator(service, lambda s: s.register_application(app2, "doubles", "0", 100_000))
    invoke("deploy", other, "1", "--function", f"{model_file}:predict", "--link", app2, env=env)
    taken = invoke(
        "deploy", name, "1", "--function", f"{model_file}:predict", "--link", app2, env=env
    )
    assert taken.exit_code == 1
    assert f"is linked to model {other!r}" in taken.stderr
    assert f"modelbus apps unlink {app2} {other} --service" in taken.stderr
    assert registered(service, name) == []


def test_a_link_that_fails_after_the_deploy_reports_the_deploy_done(
    service: RunningService,
    model_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = environment(service, tmp_path)
    name, app = unique("thermal"), unique("zone")
    as_operator(service, lambda s: s.register_application(app, "doubles", "0", 100_000))

    async def gone(self: ServiceClient, app_name: str, model_name: str) -> Any:
        raise NotFound(f"no application named {app_name!r}")  # deleted meanwhile

    monkeypatch.setattr(ServiceClient, "link_model_to_app", gone)
    result = invoke(
        "deploy", name, "1", "--function", f"{model_file}:predict", "--link", app, env=env
    )
    assert result.exit_code == 1
    first, second = result.stderr.splitlines()[-2:]
    assert first.startswith(f"error: deployed {name}:1 (closure sha256:")
    assert first.endswith(
        f"); linking it to application {app} failed: no application named {app!r}"
    )
    assert (
        second == f"  to finish: modelbus apps link {app} {name} --service {service.owner.key_text}"
    )
    assert registered(service, name) == [f"{name}:1"]
    assert not any((tmp_path / "cache").iterdir())  # deployed: the archive went


def test_a_refused_deploy_keeps_no_cache_and_the_next_run_reuses_nothing(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name = unique("thermal")
    args = ["deploy", name, "1", "--function", f"{model_file}:predict"]
    refused = invoke(*args, "--batch-size", "0", env=env)
    assert refused.exit_code == 1
    assert "interrupted" not in refused.stderr
    assert not any((tmp_path / "cache").iterdir())
    done = invoke(*args, "--label", "x", env=env)
    assert done.exit_code == 0, done.output
    assert "reusing" not in done.stderr
    info = as_operator(service, lambda s: s.get_model_info(name, "1"))
    assert info["labels"] == ["x"]


def test_a_dead_service_is_named_without_claiming_an_interrupted_upload(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    """A service whose heartbeat says it died: the deploy stops before uploading and says only
    that (no "interrupted: run the same command again to resume")."""
    dead = f"{service.owner.key_text}/s.gone/_"

    async def live_then_die() -> None:
        async with (
            BusClient(open_transport(service.bus_url), service.owner) as bus,
            anyio.create_task_group() as task_group,
        ):
            await task_group.start(Heartbeat(dead).run, bus)
            task_group.cancel_scope.cancel()  # publishes its death

    anyio.run(live_then_die)
    service.owner.save(tmp_path / "owner.key")
    env = {
        **environment(service, tmp_path),
        "MODELBUS_ENTITY": str(tmp_path / "owner.key"),
        "MODELBUS_SERVICE": dead,
    }
    result = invoke("deploy", unique("m"), "1", "--function", f"{model_file}:predict", env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: the modelbus service at {dead} is not alive (died)"
    )
    assert "interrupted" not in result.stderr
    assert "uploading" not in result.stderr
