"""clipper_admin 0.4.1, unchanged, driving a modelbus service through BusContainerManager over
MQTT on Mosquitto: connect, applications, closure deploys the Clipper way, links, predictions on
the query address, versions, replicas, logs, stopping — and what the manager refuses: a service
that is absent or silent, and every deploy or container operation of a predict-only grant.

Covers container_manager/clipper.py, container_manager/deployers.py,
container_manager/service.py, container_manager/session.py and container_manager/staging.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests

from bus import (
    PO_METADATA,
    PO_REPLY,
    PO_REQUEST,
    BusClient,
    Entity,
    Grant,
    NotFound,
    OutOfScope,
    PayloadObject,
    PermissionMissing,
    TransportError,
    error_from_wire,
    reply_uri,
)
from bus import envelope as envelopes
from container_manager import (
    CLOSURE_IMAGE_PREFIX,
    BusContainerManager,
    create_endpoint,
    deploy_python_closure,
)
from tests.container_manager.conftest import (
    RunningService,
    import_clipper_admin,
    running_service,
    saved_image_tarball,
)
from transports import open_transport

pytestmark = pytest.mark.mqtt

REPLY_WAIT_S = 15.0


def doubled(inputs: list[list[float]]) -> list[str]:
    """Clipper's closure contract: a batch of inputs in, one string per input out."""
    return [json.dumps([2 * x for x in row]) for row in inputs]


def summed(inputs: list[list[float]]) -> list[str]:
    return [str(sum(row)) for row in inputs]


def scaled(factor: float) -> Any:
    """A nested function: what Clipper's own serializer (plain cloudpickle) ships by value."""

    def predict(inputs: list[list[float]]) -> list[str]:
        return [str(factor * sum(row)) for row in inputs]

    return predict


@pytest.fixture
def clipper(service: RunningService) -> Iterator[Any]:
    """``ClipperConnection(BusContainerManager(...))`` as the operator, connected."""
    clipper_admin = import_clipper_admin()
    connection = clipper_admin.ClipperConnection(service.manager())
    connection.connect()
    yield connection
    connection.cm.close()


def predict(connection: Any, app: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"http://{connection.get_query_addr()}/{app}/predict", json=body)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_clipper_admin_drives_the_whole_flow(clipper: Any, tmp_path: Path) -> None:
    app = model = unique("zone")
    clipper.register_application(app, "doubles", "default", 2_000_000)
    metadata = {
        "type": "thermal",
        "context": {"zone": "A"},
        "resolution_s": 1800,
        "coverage": {"timezone": "UTC", "rules": [{"hours": [8, 9]}]},
    }
    deploy_python_closure(clipper, model, 1, "doubles", doubled, labels=["v1"], metadata=metadata)
    clipper.link_model_to_app(app, model)

    one = predict(clipper, app, {"input": [1.0, 2.5]})
    assert one.status_code == 200
    assert one.json() == {
        "query_id": one.json()["query_id"],
        "output": "[2.0, 5.0]",
        "default": False,
    }
    wrong = predict(clipper, app, {"input": ["not", "numbers"]})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "Query processing error")
    batch = predict(clipper, app, {"input_batch": [[1.0], [3.0]]}).json()
    assert [item["output"] for item in batch["batch_predictions"]] == ["[2.0]", "[6.0]"]
    assert set(batch) == {"batch_predictions"}

    assert app in clipper.get_all_apps()
    info = clipper.get_app_info(app)
    assert info == {
        "name": app,
        "input_type": "doubles",
        "default_output": "default",
        "latency_slo_micros": 2_000_000,
        "linked_models": [model],
    }
    assert info in clipper.get_all_apps(verbose=True)
    assert clipper.get_app_info(unique("absent")) is None
    assert clipper.get_linked_models(app) == [model]

    v1 = clipper.get_model_info(model, 1)
    assert v1["labels"] == ["v1"] and v1["is_current_version"] is True
    assert v1["container_name"].startswith(CLOSURE_IMAGE_PREFIX)
    assert v1["metadata"] == metadata
    assert clipper.get_model_info(model, 9) is None
    assert f"{model}:1" in clipper.get_all_models()

    # A second version through ClipperConnection.deploy_model itself, by closure "image".
    image = clipper.cm.build_closure(summed)
    clipper.deploy_model(model, "2", "doubles", image, labels=["v2"], batch_size=8)
    assert predict(clipper, app, {"input": [1.0, 2.5]}).json()["output"] == "3.5"
    v2 = clipper.get_model_info(model, 2)
    assert (v2["labels"], v2["batch_size"], v2["container_name"]) == (["v2"], 8, image)
    assert clipper.get_current_model_version(model) == "2"

    clipper.set_model_version(model, "1")
    assert predict(clipper, app, {"input": [1.0]}).json()["output"] == "[2.0]"

    assert clipper.get_num_replicas(model, "1") == 1
    clipper.set_num_replicas(model, 2, "1")
    assert clipper.get_num_replicas(model, "1") == 2
    replicas = clipper.get_all_model_replicas()
    assert {f"{model}:1:0", f"{model}:1:1"} <= set(replicas)
    assert clipper.get_model_replica_info(model, "1", 1)["model_replica_id"] == 1
    assert clipper.get_model_replica_info(model, "1", 7) is None

    logs = clipper.get_clipper_logs(str(tmp_path / "logs"))
    assert str(tmp_path / "logs" / f"{model}_1-replica0.log") in logs
    assert all(Path(path).exists() for path in logs)
    assert "version" in clipper.inspect_instance()

    clipper.stop_inactive_model_versions([model])  # v2
    models = {
        m["model_version"]: m
        for m in clipper.get_all_models(verbose=True)
        if m["model_name"] == model
    }
    assert (models["1"]["is_stopped"], models["2"]["is_stopped"]) == (False, True)
    assert predict(clipper, app, {"input": [4.0]}).json()["output"] == "[8.0]"

    clipper.stop_models([model])
    assert clipper.get_model_info(model, 1)["is_stopped"] is True
    answer = predict(clipper, app, {"input": [4.0]}).json()
    assert (answer["output"], answer["default"]) == ("default", True)
    assert "default_explanation" in answer

    clipper.unlink_model_from_app(app, model)
    assert clipper.get_linked_models(app) == []
    clipper.delete_application(app)
    assert clipper.get_app_info(app) is None


def test_create_endpoint_and_stop_all(clipper: Any) -> None:
    name = unique("occupancy")
    create_endpoint(clipper, name, "doubles", summed, default_output="0", slo_micros=2_000_000)
    assert predict(clipper, name, {"input": [1.0, 1.0]}).json()["output"] == "2.0"
    assert clipper.get_metric_addr() == clipper.cm.get_admin_addr() == clipper.get_query_addr()

    address = clipper.get_query_addr()
    clipper.stop_all_model_containers()
    assert clipper.get_model_info(name, 1)["is_stopped"] is True
    clipper.stop_all()
    assert not clipper.cm.is_connected
    with pytest.raises(requests.ConnectionError):
        requests.post(f"http://{address}/{name}/predict", json={"input": [1.0]})


def test_errors_come_back_as_clipper_exceptions(clipper: Any) -> None:
    clipper_admin = import_clipper_admin()
    app = unique("dup")
    clipper.register_application(app, "doubles", "0", 100_000)
    with pytest.raises(clipper_admin.ClipperException, match="already"):
        clipper.register_application(app, "doubles", "0", 100_000)
    with pytest.raises(clipper_admin.ClipperException, match="no model named"):
        clipper.link_model_to_app(app, unique("nomodel"))
    with pytest.raises(clipper_admin.ClipperException, match="registers a model by deploying"):
        clipper.register_model(unique("bare"), "1", "doubles")
    with pytest.raises(clipper_admin.ClipperException, match="400"):
        clipper.set_model_version(unique("nomodel"), "1")
    unlinked = predict(clipper, app, {"input": [1.0]})
    assert unlinked.status_code == 404 and "no linked model" in unlinked.json()["cause"]
    assert predict(clipper, unique("noapp"), {"input": [1.0]}).status_code == 404
    assert predict(clipper, app, {"nothing": 1}).json()["error"] == "Json error"


def test_an_image_that_cannot_run_is_refused_and_registers_nothing(
    clipper: Any, tmp_path: Path
) -> None:
    """Images ship as tarballs and deploy by reference; this one holds no image at all."""
    clipper_admin = import_clipper_admin()
    reference = f"example/{unique('broken')}:1"
    tarball = saved_image_tarball(tmp_path / "image.tar", reference)
    assert clipper.cm.upload_image(tarball=tarball) == reference
    name = unique("imaged")
    with pytest.raises(clipper_admin.ClipperException):
        clipper.deploy_model(name, "1", "doubles", reference)
    assert clipper.get_model_info(name, "1") is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_clippers_own_python_deployer_builds_on_the_users_engine(
    mosquitto: Any,
    docker_url: str,
    clipper_base_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """clipper_admin.deployers.python.deploy_python_closure, unchanged: the image is built on
    the user's engine (here the same Podman the service runs containers on), its push goes
    nowhere (the image is named under localhost/), and the manager ships it as a tarball."""
    clipper_admin = import_clipper_admin()
    from clipper_admin.deployers import python as python_deployer

    monkeypatch.setenv("DOCKER_HOST", docker_url)  # docker.from_env() in build_model
    with running_service(mosquitto.url, tmp_path / "service", docker_url=docker_url) as service:
        connection = clipper_admin.ClipperConnection(service.manager(ready_timeout_s=120))
        connection.connect()
        try:
            name = unique("tripled")
            connection.register_application(name, "doubles", "-1", 5_000_000)
            python_deployer.deploy_python_closure(
                connection, name, 1, "doubles", scaled(3), base_image=clipper_base_image
            )
            connection.link_model_to_app(name, name)
            assert predict(connection, name, {"input": [1.0, 2.0]}).json()["output"] == "9.0"
            info = connection.get_model_info(name, 1)
            assert (info["artifact_kind"], info["container_name"]) == (
                "image",
                f"localhost/default-cluster-{name}:1",
            )
        finally:
            connection.stop_all()


# ---- liveness ----------------------------------------------------------------------------------


def test_connect_refuses_a_namespace_where_no_service_announces_itself(
    service: RunningService,
) -> None:
    clipper_admin = import_clipper_admin()
    nobody = Entity.generate()
    manager = BusContainerManager(service.bus_url, nobody, [], nobody.key_text)
    with pytest.raises(NotFound, match="no modelbus service announces itself"):
        clipper_admin.ClipperConnection(manager).connect()
    assert not manager.is_connected
    with pytest.raises(TransportError, match="not connected"):
        manager.get_admin_addr()


def test_connect_refuses_a_heartbeat_older_than_30_s(service: RunningService) -> None:
    ghost = Entity.generate()
    lastalive = f"{ghost.key_text}/s.modelbus/_/!meta/lastalive"
    stale_ns = time.time_ns() - 45 * 10**9

    async def announce() -> None:
        async with BusClient(open_transport(service.bus_url), ghost) as bus:
            value = {"val": stale_ns, "ts": stale_ns}
            await bus.publish(lastalive, PayloadObject.msgpack(value, PO_METADATA), persist=True)

    anyio.run(announce)
    manager = BusContainerManager(service.bus_url, ghost, [], ghost.key_text)
    with pytest.raises(TransportError, match=r"not alive.*stale"):
        manager.start_clipper()
    assert not manager.is_connected


def test_a_configured_service_key_pins_liveness_and_replies(service: RunningService) -> None:
    """Issue 12 item 4: with ``service_key`` configured, only that key's heartbeat counts: the
    service's own key connects, any other finds no announcement of its own."""
    pinned = service.manager(service_key=service.owner.key_text)
    pinned.connect()
    try:
        assert pinned.is_connected
    finally:
        pinned.close()
    stranger = Entity.generate().key_text
    wrong = service.manager(service_key=stranger)
    with pytest.raises(NotFound, match=f"no modelbus service announces itself.*{stranger}"):
        wrong.connect()
    assert not wrong.is_connected


# ---- what a predict-only grant may not do ------------------------------------------------------


def test_a_predict_only_grant_predicts_and_is_refused_everything_else(
    service: RunningService, clipper: Any
) -> None:
    clipper_admin = import_clipper_admin()
    app = unique("public")
    create_endpoint(clipper, app, "doubles", summed, slo_micros=2_000_000)

    viewer = clipper_admin.ClipperConnection(
        service.manager(service.viewer, service.viewer_proofs())
    )
    viewer.connect()
    try:
        assert predict(viewer, app, {"input": [2.0, 3.0]}).json()["output"] == "5.0"
        with pytest.raises(PermissionMissing):
            deploy_python_closure(viewer, unique("mine"), 1, "doubles", summed)
        with pytest.raises(PermissionMissing):
            viewer.deploy_model(
                app, "9", "doubles", clipper.get_model_info(app, 1)["container_name"]
            )
        with pytest.raises(PermissionMissing):
            viewer.cm.run_container("example/model:1", "mine", {"A": "1"})
        with pytest.raises(PermissionMissing):
            viewer.cm.list_containers({"modelbus.model": app})
        with pytest.raises(clipper_admin.ClipperException, match=r"PermissionMissing|grant"):
            viewer.register_application(unique("mine"), "doubles", "0", 100_000)
        with pytest.raises(clipper_admin.ClipperException, match="grant"):
            viewer.stop_all_model_containers()
    finally:
        viewer.cm.close()
    assert clipper.get_model_info(app, 1)["is_stopped"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"op": "container.list", "labels": {}},
        {"op": "container.run", "image": "example/model:1", "name": "mine", "env": {}},
        {
            "op": "model.deploy",
            "name": "mine",
            "version": "1",
            "input_type": "doubles",
            "artifact": "0" * 64,
        },
    ],
    ids=["container.list", "container.run", "model.deploy"],
)
def test_the_service_refuses_deploy_slot_requests_made_with_a_predict_grant(
    service: RunningService, body: dict[str, Any]
) -> None:
    """A frame made by hand (the client library would not send it): the service answers
    OutOfScope on the viewer's reply signal."""
    error = anyio.run(refusal, service, service.viewer, service.viewer_proofs()[0], body)
    assert isinstance(error, OutOfScope), error


async def refusal(
    service: RunningService, sender: Entity, proof: list[Grant], body: dict[str, Any]
) -> Exception:
    uri = service.slot("deploy")
    async with (
        BusClient(open_transport(service.bus_url), sender) as bus,
        bus.subscribe(reply_uri(uri, sender.key_text), check_scope=False) as replies,
    ):
        rid = uuid.uuid4().hex
        request = PayloadObject.msgpack({"id": rid, "body": body}, PO_REQUEST)
        proof_bytes = tuple(grant.encode() for grant in proof)
        await bus.transport.publish(uri, envelopes.seal(sender, uri, (request,), proof=proof_bytes))
        with anyio.fail_after(REPLY_WAIT_S):
            async for message in replies:
                reply = message.value(PO_REPLY)
                if reply["id"] == rid:
                    assert reply["ok"] is False, reply
                    error = reply["error"]
                    return error_from_wire(error["code"], error["message"], error["details"])
    raise AssertionError("the reply subscription ended")
