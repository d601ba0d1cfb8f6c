"""``modelbus apps …`` against a real service on Mosquitto: register, list, info, link, linked,
unlink, delete — readable and ``--json`` — and their refusals (unknown, taken, no grant).

Also covers proxy/cli/remote.py (``--service``, ``--json``, the call and its liveness check).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_deploy import as_operator, environment, invoke
from tests.proxy.models import double

pytestmark = pytest.mark.mqtt


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_register_list_info_link_unlink_delete(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    app, model = unique("zone"), unique("thermal")
    as_operator(service, lambda s: s.deploy_function(model, "1", double, "doubles", replicas=0))

    made = invoke("apps", "register", app, "--slo-micros", "5000", "--default-output", "0", env=env)
    assert made.exit_code == 0, made.output
    assert made.stdout.splitlines() == [
        f"registered application {app} (doubles, SLO 5000 µs, default output '0')",
        f"next: modelbus apps link {app} MODEL --service {service.owner.key_text}",
    ]

    listed = invoke("apps", "list", env=env)
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "INPUT", "SLO_MICROS", "DEFAULT", "LINKED"]
    assert [app, "doubles", "5000", "0", "-"] in [row.split() for row in rows]

    linked = invoke("apps", "link", app, model, env=env)
    assert linked.exit_code == 0, linked.output
    assert linked.stdout == f"linked application {app} to model {model}\n"
    info = invoke("apps", "info", app, env=env)
    assert info.exit_code == 0
    assert f"linked_models:      {model}" in info.stdout.splitlines()
    as_json = json.loads(invoke("apps", "info", app, "--json", env=env).stdout)
    assert as_json == {
        "name": app,
        "input_type": "doubles",
        "default_output": "0",
        "latency_slo_micros": 5000,
        "linked_models": [model],
    }
    assert invoke("apps", "linked", app, env=env).stdout == f"{model}\n"
    assert json.loads(invoke("apps", "linked", app, "--json", env=env).stdout) == [model]
    names = json.loads(invoke("apps", "list", "--json", env=env).stdout)
    assert as_json in names

    unlinked = invoke("apps", "unlink", app, model, env=env)
    assert unlinked.exit_code == 0, unlinked.output
    assert unlinked.stdout == f"unlinked model {model} from application {app}\n"
    none = invoke("apps", "linked", app, env=env)
    assert (none.exit_code, none.stdout) == (0, "")
    assert f"application {app} has no linked model" in none.stderr

    deleted = invoke("apps", "delete", app, "--json", env=env)
    assert deleted.exit_code == 0
    assert json.loads(deleted.stdout)["name"] == app
    gone = invoke("apps", "info", app, env=env)
    assert gone.exit_code == 1
    assert gone.stderr.startswith("error: ") and app in gone.stderr


def test_refusals_are_errors_with_exit_status_1(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    app = unique("zone")
    assert invoke("apps", "register", app, env=env).exit_code == 0
    taken = invoke("apps", "register", app, env=env)
    assert taken.exit_code == 1
    assert taken.stderr.startswith("error: ") and "Traceback" not in taken.output
    no_model = invoke("apps", "link", app, unique("nothing"), env=env)
    assert no_model.exit_code == 1
    assert no_model.stderr.startswith("error: ")
    not_linked = invoke("apps", "unlink", app, "thermal", env=env)
    assert not_linked.exit_code == 1
    for command in (["delete"], ["info"], ["linked"]):
        unknown = invoke("apps", *command, unique("nowhere"), env=env)
        assert unknown.exit_code == 1, command
        assert unknown.stderr.startswith("error: ")


def test_a_predict_only_grant_cannot_manage_applications(
    service: RunningService, tmp_path: Path
) -> None:
    env = environment(service, tmp_path, who="viewer")
    result = invoke("apps", "list", env=env)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    admin = service.slot("admin")
    assert lines[0].startswith(
        f"error: none of the 2 grant chains this entity holds lets it 'P' on '{admin}'"
    )
    assert lines[1] == f"  asked for:  {service.service_uri}"
    assert sum(line.startswith("  proof:      ") for line in lines) == 2
    assert lines[-1] == (
        f"    modelbus grant --from OWNER.key --to {service.viewer.key_text} "
        f"--uri '{service.service_uri}/*' --perms C*P --expires 30d -o you.grant"
    )


def test_usage_errors_exit_2(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    del env["MODELBUS_SERVICE"]
    missing = invoke("apps", "list", env=env)
    assert missing.exit_code == 2
    assert "--service" in missing.stderr
    bad_type = invoke("apps", "register", "a", "--input-type", "words", "--service", "x", env=env)
    assert bad_type.exit_code == 2


def test_a_service_that_does_not_run_is_named_at_once(
    service: RunningService, tmp_path: Path
) -> None:
    service.owner.save(tmp_path / "owner.key")  # the namespace's owner needs no proof
    env = {**environment(service, tmp_path), "MODELBUS_ENTITY": str(tmp_path / "owner.key")}
    env["MODELBUS_SERVICE"] = f"{service.owner.key_text}/s.elsewhere/_"
    result = invoke("apps", "list", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: no modelbus service announces itself at {service.owner.key_text}/s.elsewhere/_"
    )
