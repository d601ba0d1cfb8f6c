"""Clipper's REST API on loopback (container_manager.rest, container_manager.loopback), against
a stand-in for the service: shapes and status codes, input decoding, who may connect, and the
endpoint's own event loop (a caller blocking on HTTP inside its own loop is still answered)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from anyio.from_thread import start_blocking_portal

from bus import Conflict, NotFound, OutOfScope, Overloaded, RequestTimeout
from container_manager import loopback
from container_manager.loopback import LoopbackServer, peer_uid
from container_manager.rest import AddModel, ClipperRest


class FakeService:
    """The ServiceClient methods ClipperRest uses, over dicts; ``calls`` records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.apps: dict[str, dict[str, Any]] = {
            "nums": {"name": "nums", "input_type": "doubles", "linked_models": ["m"]},
            "raw": {"name": "raw", "input_type": "bytes", "linked_models": ["m"]},
        }

    async def register_application(self, name: str, *args: Any) -> dict[str, Any]:
        self.calls.append(("register_application", (name, *args)))
        if name in self.apps:
            raise Conflict(f"application {name!r} already exists")
        self.apps[name] = {"name": name, "input_type": args[0], "linked_models": []}
        return self.apps[name]

    async def get_app_info(self, name: str) -> dict[str, Any]:
        self.calls.append(("get_app_info", name))
        if name not in self.apps:
            raise NotFound(f"no application named {name!r}")
        return self.apps[name]

    async def get_all_apps(self, verbose: bool = False) -> list[Any]:
        return list(self.apps.values()) if verbose else sorted(self.apps)

    async def link_model_to_app(self, app: str, model: str) -> dict[str, Any]:
        self.calls.append(("link", (app, model)))
        return {}

    async def get_linked_models(self, app: str) -> list[str]:
        return list((await self.get_app_info(app))["linked_models"])

    async def get_model_info(self, name: str, version: str) -> dict[str, Any]:
        if (name, version) != ("m", "1"):
            raise NotFound(f"no model {name}:{version}")
        return {"model_name": "m", "model_version": "1", "input_type": "doubles"}

    async def get_all_models(self, verbose: bool = False) -> list[Any]:
        info = await self.get_model_info("m", "1")
        return [info | {"is_stopped": False}] if verbose else ["m:1"]

    async def get_replicas(self, name: str, version: str) -> list[dict[str, Any]]:
        return [{"index": 0, "state": "ready"}, {"index": 1, "state": "starting"}]

    async def stop_versioned_models(self, versions: dict[str, list[str]]) -> list[str]:
        self.calls.append(("stop", versions))
        return []

    async def status(self) -> dict[str, Any]:
        return {"version": "test"}

    async def predict(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("predict", request))
        failures = {
            "busy": Overloaded("full"),
            "slow": RequestTimeout("late"),
            "secret": OutOfScope("not yours"),
        }
        if request["app"] in failures:
            raise failures[request["app"]]
        if request["app"] not in self.apps:
            raise NotFound(f"no application named {request['app']!r}")
        base = {"model": "m", "version": "1"}
        if "inputs" in request:
            items = [
                {"query_id": i, "output": repr(x), "default": False}
                for i, x in enumerate(request["inputs"])
            ]
            return base | {"batch_predictions": items}
        return base | {"query_id": 7, "output": repr(request["input"]), "default": False}


class FakeRegistrar:
    def __init__(self) -> None:
        self.added: list[AddModel] = []

    async def add_model(self, request: AddModel) -> None:
        self.added.append(request)


class Endpoint:
    def __init__(self, server: LoopbackServer, service: FakeService, registrar: FakeRegistrar):
        self.server = server
        self.service = service
        self.registrar = registrar

    def url(self, path: str) -> str:
        return f"http://{self.server.address}{path}"

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return requests.post(self.url(path), data=data, headers=headers, timeout=10)


@pytest.fixture(params=["uid", "token"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    service, registrar = FakeService(), FakeRegistrar()
    with start_blocking_portal(backend="asyncio") as portal:
        rest = ClipperRest(service, registrar)  # type: ignore[arg-type]
        server = LoopbackServer(
            lambda method, path, body: portal.call(rest.respond, method, path, body),
            auth=request.param,
        )
        try:
            yield Endpoint(server, service, registrar)
        finally:
            server.close()


def test_admin_answers_clipper_shapes_and_status_codes(endpoint: Endpoint) -> None:
    added = endpoint.post(
        "/admin/add_app",
        {"name": "new", "input_type": "doubles", "default_output": "0", "latency_slo_micros": 1000},
    )
    assert (added.status_code, added.text) == (
        200,
        "Successfully added application with name 'new'",
    )
    again = endpoint.post(
        "/admin/add_app",
        {"name": "new", "input_type": "doubles", "default_output": "0", "latency_slo_micros": 1000},
    )
    assert again.status_code == 400 and "already exists [conflict]" in again.text
    assert (
        endpoint.post("/admin/get_application", {"name": "nums"}).json()["input_type"] == "doubles"
    )
    assert endpoint.post("/admin/get_application", {"name": "nope"}).json() == {}
    assert endpoint.post("/admin/get_model", {"model_name": "m", "model_version": "2"}).json() == {}
    assert endpoint.post("/admin/get_all_applications", {"verbose": False}).json() == [
        "new",
        "nums",
        "raw",
    ]
    assert endpoint.post("/admin/get_linked_models", {"app_name": "nums"}).json() == ["m"]
    assert endpoint.post("/admin/get_linked_models", {"app_name": "nope"}).status_code == 400
    assert endpoint.post("/admin/get_all_containers", {"verbose": False}).json() == [
        "m:1:0",
        "m:1:1",
    ]
    replica = {"model_name": "m", "model_version": "1", "replica_id": 1}
    assert endpoint.post("/admin/get_container", replica).json()["state"] == "starting"
    assert endpoint.post("/admin/get_container", replica | {"replica_id": 5}).json() == {}
    deleted = endpoint.post(
        "/admin/delete_versioned_model", {"model_name": "m", "model_version": "1"}
    )
    assert deleted.status_code == 200 and ("stop", {"m": ["1"]}) in endpoint.service.calls
    assert requests.get(endpoint.url("/admin/ping"), timeout=10).status_code == 200
    assert requests.get(endpoint.url("/metrics"), timeout=10).json() == {"version": "test"}


def test_links_take_exactly_one_model(endpoint: Endpoint) -> None:
    two = endpoint.post("/admin/add_model_links", {"app_name": "nums", "model_names": ["a", "b"]})
    assert two.status_code == 400 and "at most one model" in two.text
    one = endpoint.post("/admin/add_model_links", {"app_name": "nums", "model_names": ["a"]})
    assert one.status_code == 200 and ("link", ("nums", "a")) in endpoint.service.calls


def test_add_model_goes_to_the_registrar_with_clippers_fields(endpoint: Endpoint) -> None:
    body = {
        "model_name": "m",
        "model_version": "2",
        "labels": ["x"],
        "input_type": "doubles",
        "container_name": "img:1",
        "model_data_path": "DEPRECATED",
        "batch_size": 4,
    }
    assert endpoint.post("/admin/add_model", body).status_code == 200
    assert endpoint.registrar.added == [AddModel(**body)]
    bad = endpoint.post("/admin/add_model", body | {"batch_size": 0})
    assert bad.status_code == 400 and "batch size" in bad.text


def test_malformed_requests_are_400_and_unknown_paths_404(endpoint: Endpoint) -> None:
    assert endpoint.post("/admin/add_app", b"{not json").status_code == 400
    missing = endpoint.post("/admin/add_app", {"name": "x"})
    assert missing.status_code == 400 and "input_type" in missing.text
    assert endpoint.post("/admin/drop_everything", {}).status_code == 404
    assert requests.get(endpoint.url("/nums/predict"), timeout=10).status_code == 404


def test_predictions_answer_clippers_shape_without_provenance(endpoint: Endpoint) -> None:
    one = endpoint.post("/nums/predict", {"input": [1.0, 2.0]})
    assert one.json() == {"query_id": 7, "output": "[1.0, 2.0]", "default": False}
    batch = endpoint.post("/nums/predict", {"input_batch": [[1.0], [2.0]]}).json()
    assert batch == {
        "batch_predictions": [
            {"query_id": 0, "output": "[1.0]", "default": False},
            {"query_id": 1, "output": "[2.0]", "default": False},
        ]
    }


def test_bytes_inputs_arrive_base64_encoded(endpoint: Endpoint) -> None:
    encoded = base64.b64encode(b"\x00\xffraw").decode()
    assert endpoint.post("/raw/predict", {"input": encoded}).json()["output"] == repr(
        b"\x00\xffraw"
    )
    bad = endpoint.post("/raw/predict", {"input": "not base64!"})
    assert (bad.status_code, bad.json()["error"]) == (400, "Json error")


@pytest.mark.parametrize(
    ("app", "status"),
    [("busy", 503), ("slow", 504), ("secret", 403), ("nope", 404)],
)
def test_prediction_errors_map_to_http_statuses(endpoint: Endpoint, app: str, status: int) -> None:
    reply = endpoint.post(f"/{app}/predict", {"input": [1.0]})
    assert reply.status_code == status
    assert set(reply.json()) == {"error", "cause"}


def test_predict_without_an_input_is_a_json_error(endpoint: Endpoint) -> None:
    reply = endpoint.post("/nums/predict", {"inputs": [1.0]})
    assert (reply.status_code, reply.json()["error"]) == (400, "Json error")


def test_a_caller_blocking_inside_its_own_event_loop_is_answered(endpoint: Endpoint) -> None:
    """The trap clipper_admin falls into when the endpoint shares the caller's loop."""

    async def blocking_caller() -> int:
        return endpoint.post("/nums/predict", {"input": [1.0]}).status_code  # blocks this loop

    assert asyncio.run(blocking_caller()) == 200


def test_concurrent_connections_are_all_answered(endpoint: Endpoint) -> None:
    results: list[int] = []

    def call(index: int) -> None:
        results.append(endpoint.post("/nums/predict", {"input": [float(index)]}).status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 12


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
