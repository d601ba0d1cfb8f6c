"""Clipper's REST API on loopback (container_manager.rest, container_manager.loopback), against
the real service (this package's ``service`` fixture: a proxy on Mosquitto, closures in real
worker processes), as a container manager's session serves it: shapes and status codes read back
from the service's state, input decoding, every prediction error status produced for real (an
unknown app 404; a sender with no predict grant 403; a model that cannot answer in the client's
time 504; a service at its concurrency limit 503), who may connect, and the endpoint's own event
loop (a caller blocking on HTTP inside its own loop is still answered)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bus import Entity
from container_manager import BusContainerManager, loopback
from container_manager.loopback import LoopbackServer, peer_uid
from tests.container_manager.conftest import RunningService, running_service
from tests.fixtures.mosquitto import MosquittoBroker

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}  # what the loopback endpoint accepts


def echo(inputs: list[Any]) -> list[str]:
    """The model behind ``nums`` and ``raw``: each input's repr."""
    return [repr(value) for value in inputs]


def gated(gate: str) -> Callable[[list[Any]], list[str]]:
    """A model that answers only once the file ``gate`` exists (in the worker)."""

    def predict(inputs: list[Any]) -> list[str]:
        import os as worker_os
        import time as worker_time

        while not worker_os.path.exists(gate):
            worker_time.sleep(0.01)
        return [repr(value) for value in inputs]

    return predict


@dataclass
class Models:
    """What the module's service holds: apps ``nums`` (doubles) and ``raw`` (bytes) linked to
    echo models, and ``held`` whose model answers only once ``gate`` exists."""

    gate: Path


def deploy_app(manager: BusContainerManager, app: str, input_type: str, func: Any) -> None:
    service = manager.service
    manager.call(service.register_application, app, input_type, "none", 60_000_000)
    manager.call(service.deploy_function, f"{app}-model", "1", func, input_type)
    manager.call(service.wait_ready, f"{app}-model", "1")
    manager.call(service.link_model_to_app, app, f"{app}-model")


@pytest.fixture(scope="module")
def models(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    gate = service.gates / "open"
    with service.manager() as manager:
        deploy_app(manager, "nums", "doubles", echo)
        deploy_app(manager, "raw", "bytes", echo)
        deploy_app(manager, "held", "doubles", gated(str(gate)))
    yield Models(gate)
    gate.touch()  # let a held worker finish


class Endpoint:
    """A container manager's loopback endpoint, and the manager (to read the service back)."""

    def __init__(self, manager: BusContainerManager) -> None:
        self.manager = manager
        self.address = manager.get_admin_addr()

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url(path), data=data, headers=JSON, timeout=30)

    def call(self, method: str, *args: Any) -> Any:
        return self.manager.call(getattr(self.manager.service, method), *args)


@pytest.fixture(params=["uid", "token"])
def endpoint(
    request: pytest.FixtureRequest, service: RunningService, models: Models
) -> Iterator[Endpoint]:
    with service.manager(local_auth=request.param) as manager:
        yield Endpoint(manager)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_admin_answers_clipper_shapes_and_status_codes(endpoint: Endpoint) -> None:
    new = unique("new")
    app = {"name": new, "input_type": "doubles", "default_output": "0", "latency_slo_micros": 1000}
    added = endpoint.post("/admin/add_app", app)
    assert (added.status_code, added.text) == (
        200,
        f"Successfully added application with name '{new}'",
    )
    assert endpoint.call("get_app_info", new)["input_type"] == "doubles"
    again = endpoint.post("/admin/add_app", app)
    assert again.status_code == 400 and "already exists [conflict]" in again.text
    assert (
        endpoint.post("/admin/get_application", {"name": "nums"}).json()["input_type"] == "doubles"
    )
    assert endpoint.post("/admin/get_application", {"name": "nope"}).json() == {}
    assert endpoint.post("/admin/get_model", {"model_name": "m", "model_version": "2"}).json() == {}
    listed = endpoint.post("/admin/get_all_applications", {"verbose": False}).json()
    assert {new, "nums", "raw"} <= set(listed) and listed == sorted(listed)
    assert endpoint.post("/admin/get_linked_models", {"app_name": "nums"}).json() == ["nums-model"]
    assert endpoint.post("/admin/get_linked_models", {"app_name": "nope"}).status_code == 400
    containers = endpoint.post("/admin/get_all_containers", {"verbose": False}).json()
    assert {"nums-model:1:0", "raw-model:1:0"} <= set(containers)
    replica = {"model_name": "nums-model", "model_version": "1", "replica_id": 0}
    assert endpoint.post("/admin/get_container", replica).json()["state"] == "ready"
    assert endpoint.post("/admin/get_container", replica | {"replica_id": 5}).json() == {}
    assert requests.get(endpoint.url("/admin/ping"), timeout=10).status_code == 200
    metrics = requests.get(endpoint.url("/metrics"), timeout=10).json()
    assert set(metrics) == set(endpoint.call("status")) and "version" in metrics


def test_delete_versioned_model_stops_it(endpoint: Endpoint) -> None:
    name = unique("gone")
    endpoint.call("deploy_function", name, "1", echo, "doubles")
    endpoint.call("wait_ready", name, "1")
    assert f"{name}:1:0" in endpoint.post("/admin/get_all_containers", {"verbose": False}).json()
    deleted = endpoint.post(
        "/admin/delete_versioned_model", {"model_name": name, "model_version": "1"}
    )
    assert deleted.status_code == 200
    assert endpoint.call("get_model_info", name, "1")["is_stopped"] is True
    assert (
        f"{name}:1:0" not in endpoint.post("/admin/get_all_containers", {"verbose": False}).json()
    )
    missing = endpoint.post(
        "/admin/delete_versioned_model", {"model_name": name, "model_version": "9"}
    )
    assert missing.status_code == 400


def test_links_take_exactly_one_model(endpoint: Endpoint) -> None:
    app = unique("linked")
    endpoint.call("register_application", app, "doubles", "0", 100_000)
    two = endpoint.post("/admin/add_model_links", {"app_name": app, "model_names": ["a", "b"]})
    assert two.status_code == 400 and "at most one model" in two.text
    assert endpoint.call("get_linked_models", app) == []
    one = endpoint.post("/admin/add_model_links", {"app_name": app, "model_names": ["nums-model"]})
    assert one.status_code == 200
    assert endpoint.call("get_linked_models", app) == ["nums-model"]


def test_add_model_completes_a_staged_deploy_with_clippers_fields(endpoint: Endpoint) -> None:
    name = unique("added")
    body = {
        "model_name": name,
        "model_version": "2",
        "labels": ["x"],
        "input_type": "doubles",
        "container_name": "img:1",
        "model_data_path": "DEPRECATED",
        "batch_size": 4,
    }
    unstaged = endpoint.post("/admin/add_model", body)
    assert unstaged.status_code == 400 and "nothing to register" in unstaged.text
    bad = endpoint.post("/admin/add_model", body | {"batch_size": 0})
    assert bad.status_code == 400 and "batch size" in bad.text

    image = endpoint.manager.build_closure(echo)
    endpoint.manager.deploy_model(name, "2", "doubles", image)
    assert endpoint.post("/admin/add_model", body | {"container_name": image}).status_code == 200
    info = endpoint.call("get_model_info", name, "2")
    assert (info["labels"], info["batch_size"], info["input_type"]) == (["x"], 4, "doubles")


def test_malformed_requests_are_400_and_unknown_paths_404(endpoint: Endpoint) -> None:
    assert endpoint.post("/admin/add_app", b"{not json").status_code == 400
    missing = endpoint.post("/admin/add_app", {"name": "x"})
    assert missing.status_code == 400 and "input_type" in missing.text
    assert endpoint.post("/admin/drop_everything", {}).status_code == 404
    assert requests.get(endpoint.url("/nums/predict"), timeout=10).status_code == 404


def test_predictions_answer_clippers_shape_without_provenance(endpoint: Endpoint) -> None:
    one = endpoint.post("/nums/predict", {"input": [1.0, 2.0]}).json()
    assert set(one) == {"query_id", "output", "default"}
    assert (one["output"], one["default"]) == ("[1.0, 2.0]", False)
    batch = endpoint.post("/nums/predict", {"input_batch": [[1.0], [2.0]]}).json()
    assert list(batch) == ["batch_predictions"]
    assert [(p["output"], p["default"]) for p in batch["batch_predictions"]] == [
        ("[1.0]", False),
        ("[2.0]", False),
    ]


def test_bytes_inputs_arrive_base64_encoded(endpoint: Endpoint) -> None:
    encoded = base64.b64encode(b"\x00\xffraw").decode()
    assert endpoint.post("/raw/predict", {"input": encoded}).json()["output"] == repr(
        b"\x00\xffraw"
    )
    bad = endpoint.post("/raw/predict", {"input": "not base64!"})
    assert (bad.status_code, bad.json()["error"]) == (400, "Json error")


def test_an_unknown_app_is_404(endpoint: Endpoint) -> None:
    reply = endpoint.post("/nope/predict", {"input": [1.0]})
    assert reply.status_code == 404 and set(reply.json()) == {"error", "cause"}


def test_a_sender_without_a_predict_grant_is_403(service: RunningService, models: Models) -> None:
    stranger = Entity.generate(comment="stranger")
    proofs = [
        [service.grant(stranger, service.slot("admin"), "P")],
        [service.grant(stranger, f"{service.service_uri}/!meta/*", "C*")],
    ]
    with service.manager(stranger, proofs) as manager:
        reply = requests.post(
            f"http://{manager.get_admin_addr()}/nums/predict",
            data=b'{"input": [1.0]}',
            headers=JSON,
            timeout=30,
        )
    assert reply.status_code == 403 and set(reply.json()) == {"error", "cause"}


def test_no_reply_in_the_clients_time_is_504(service: RunningService, models: Models) -> None:
    with service.manager(timeout_s=1.0) as manager:
        reply = requests.post(
            f"http://{manager.get_admin_addr()}/held/predict",
            data=b'{"input": [1.0]}',
            headers=JSON,
            timeout=30,
        )
    assert reply.status_code == 504 and set(reply.json()) == {"error", "cause"}


def test_a_service_at_its_concurrency_limit_is_503(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    mosquitto.start()
    with (
        running_service(mosquitto.url, tmp_path / "busy", max_concurrency=1) as busy,
        busy.manager() as manager,
    ):
        gate = busy.gates / "gate"
        deploy_app(manager, "held", "doubles", gated(str(gate)))
        url = f"http://{manager.get_admin_addr()}"
        first: list[requests.Response] = []
        holder = threading.Thread(
            target=lambda: first.append(
                requests.post(
                    f"{url}/held/predict", data=b'{"input": [1.0]}', headers=JSON, timeout=60
                )
            )
        )
        holder.start()
        try:
            # The held request is in flight (its slot's one place taken) once its worker has it.
            while manager.call(manager.service.get_replicas, "held-model", "1")[0]["in_flight"] < 1:
                time.sleep(0.05)  # polls state the service offers no event for
            reply = requests.post(
                f"{url}/held/predict", data=b'{"input": [2.0]}', headers=JSON, timeout=30
            )
            assert reply.status_code == 503 and set(reply.json()) == {"error", "cause"}
        finally:
            gate.touch()
            holder.join(timeout=60)
        assert [r.status_code for r in first] == [200]


def test_predict_without_an_input_is_a_json_error(endpoint: Endpoint) -> None:
    reply = endpoint.post("/nums/predict", {"inputs": [1.0]})
    assert (reply.status_code, reply.json()["error"]) == (400, "Json error")


def test_a_caller_blocking_inside_its_own_event_loop_is_answered(endpoint: Endpoint) -> None:
    """The trap clipper_admin falls into when the endpoint shares the caller's loop."""

    async def blocking_caller() -> int:
        return endpoint.post("/nums/predict", {"input": [1.0]}).status_code  # blocks this loop

    assert asyncio.run(blocking_caller()) == 200


def test_concurrent_connections_are_all_answered(endpoint: Endpoint) -> None:
    results: list[tuple[int, str]] = []

    def call(index: int) -> None:
        reply = endpoint.post("/nums/predict", {"input": [float(index)]})
        results.append((reply.status_code, reply.json()["output"]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == sorted((200, repr([float(i)])) for i in range(12))


# ---- who may connect ---------------------------------------------------------------------------


def test_the_owner_of_a_loopback_connection_is_found() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            server_side, _ = listener.accept()
            with server_side:
                assert peer_uid(client.getsockname(), listener.getsockname()) == os.getuid()
                assert peer_uid(("127.0.0.1", 1), listener.getsockname()) is None


def test_peer_uid_reads_the_kernels_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1234\n"
    )
    if socket.htonl(1) == 1:  # big-endian hosts print the address the other way round
        pytest.fail("this table is written for a little-endian host")
    assert loopback._table_uid(("127.0.0.1", 0x9C40), ("127.0.0.1", 0x1F90), table) == 1234
    assert loopback._table_uid(("127.0.0.1", 0x1F90), ("127.0.0.1", 0x9C40), table) is None


def test_another_user_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopback, "peer_uid", lambda client, server: os.getuid() + 1)
    server = LoopbackServer(lambda method, path, body: loopback.HttpReply.text("ok"), auth="uid")
    try:
        reply = requests.get(f"http://{server.address}/admin/ping", timeout=10)
        assert reply.status_code == 403
    finally:
        server.close()


@pytest.mark.parametrize("auth", ["uid", "token"])
def test_the_address_carries_a_secret_prefix_on_every_platform(auth: loopback.LocalAuth) -> None:
    server = LoopbackServer(lambda method, path, body: loopback.HttpReply.text(path), auth=auth)
    try:
        host_port, _, token = server.address.partition("/")
        assert len(token) >= 24
        assert requests.get(f"http://{host_port}/admin/ping", timeout=10).status_code == 404
        assert (
            requests.get(f"http://{host_port}/x{token}/admin/ping", timeout=10).status_code == 404
        )
        answered = requests.get(f"http://{server.address}/admin/ping", timeout=10)
        assert (answered.status_code, answered.text) == (200, "/admin/ping")
    finally:
        server.close()


def test_oversized_bodies_are_refused_unread() -> None:
    server = LoopbackServer(lambda method, path, body: loopback.HttpReply.text("ok"), auth="uid")
    try:
        port = int(server.address.split("/")[0].split(":")[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /admin/add_app HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 413")
    finally:
        server.close()


@pytest.fixture
def recorded() -> Iterator[tuple[LoopbackServer, list[str]]]:
    """A loopback server that records the paths it answered."""
    calls: list[str] = []

    def respond(method: str, path: str, body: bytes) -> loopback.HttpReply:
        calls.append(path)
        return loopback.HttpReply.json({"deleted": True})

    server = LoopbackServer(respond)
    try:
        yield server, calls
    finally:
        server.close()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),  # a DNS-rebound page names its own host
        ({"Host": "evil.example:{port}"}, 421),
        ({"Host": "127.0.0.1:1"}, 421),  # the right address on another port
        ({"Origin": "http://evil.example"}, 403),  # a cross-site page's fetch or form
        ({"Origin": "null"}, 403),  # a sandboxed frame, a file:// page
        ({"Origin": "http://127.0.0.1:1"}, 403),  # another local web app
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a form post needs no CORS preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": None}, 415),
    ],
)
def test_web_pages_cannot_use_the_endpoint(
    recorded: tuple[LoopbackServer, list[str]], headers: dict[str, str | None], status: int
) -> None:
    """Issue 12 item 6: what a browser sends for a cross-site or DNS-rebound page is refused
    before it reaches the service (a cross-site text/plain POST once deleted an application)."""
    server, calls = recorded
    port = server.address.split("/")[0].split(":")[1]
    sent = {"Content-Type": "application/json"} | {
        name: value.format(port=port) if value else value for name, value in headers.items()
    }
    url = f"http://{server.address}/admin/delete_application"
    reply = requests.post(url, data=b'{"name": "zone-a"}', headers=sent, timeout=10)
    assert reply.status_code == status, reply.text
    assert calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"},
        {"Sec-Fetch-Site": "none", "Content-Type": "application/json; charset=utf-8"},
    ],
)
def test_the_users_own_programs_are_answered(
    recorded: tuple[LoopbackServer, list[str]], headers: dict[str, str]
) -> None:
    server, calls = recorded
    port = server.address.split("/")[0].split(":")[1]
    sent = {"Content-Type": "application/json"} | {
        name: value.format(port=port) for name, value in headers.items()
    }
    url = f"http://{server.address}/admin/delete_application"
    reply = requests.post(url, data=b'{"name": "zone-a"}', headers=sent, timeout=10)
    assert reply.status_code == 200, reply.text
    assert calls == ["/admin/delete_application"]
