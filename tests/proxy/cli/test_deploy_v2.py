"""``modelbus deploy NAME V --v2-url URL --v2-model M`` against a real service on Mosquitto and a
real MLServer (tests/fixtures/mlserver.py): deployed, linked, predicting; and its usage errors.

Covers the v2 path of proxy/cli/deploy.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.container_manager.conftest import RunningService
from tests.fixtures.mlserver import MLServer
from tests.proxy.cli.test_deploy import as_operator, environment, invoke

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def test_deploy_a_version_served_by_mlserver(
    service: RunningService, mlserver: MLServer, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name, app = f"doubled-{uuid.uuid4().hex[:8]}", f"zone-{uuid.uuid4().hex[:8]}"
    as_operator(service, lambda s: s.register_application(app, "doubles", "0", 2_000_000))
    args = ["deploy", name, "1", "--v2-url", mlserver.url, "--v2-model", "doubler", "--link", app]
    done = invoke(*args, env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"deployed {name}:1 (served by {mlserver.url}, model doubler)")
    answer = as_operator(service, lambda s: s.predict(app=app, input=[1.0, 2.5]))
    assert (answer["output"], answer["default"]) == ([2.0, 5.0], False)

    refused = invoke("deploy", name, "2", "--v2-url", "ftp://x", "--v2-model", "m", env=env)
    assert refused.exit_code == 1
    assert "http:// or https://" in refused.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--v2-url", "http://h:8080"],
        ["--v2-model", "m"],
        ["--v2-url", "http://h:8080", "--v2-model", "m", "--function", "f.py:f"],
    ],
)
def test_usage_errors(service: RunningService, tmp_path: Path, args: list[str]) -> None:
    result = invoke("deploy", "m", "1", *args, env=environment(service, tmp_path))
    assert result.exit_code == 2
    assert "--v2-url and --v2-model go together" in result.stderr
