"""The remote V2 backend against a real MLServer (tests/fixtures/mlserver.py): batching, shapes,
readiness, and the server's errors as typed errors; then a v2 version deployed and predicted
through the bus, and served again after a restart.

Covers proxy/backend/remote_v2.py, its dispatch in proxy/backend/embedded.py, the v2 deploy in
proxy/service/operations/deploy.py and proxy/service/versions.py, and
container_manager's ``deploy_v2``.
"""

from __future__ import annotations

from typing import Any

import pytest

from bus.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    RequestTimeout,
    TransportError,
)
from proxy.backend.remote_v2 import RemoteV2Versions, V2Endpoint, check_v2_url
from tests.fixtures.mlserver import MLServer
from tests.fixtures.ports import free_port
from tests.proxy.conftest import ProxyHarness

pytestmark = pytest.mark.slow


async def started(
    remote: RemoteV2Versions, server: MLServer, model: str = "doubler", **fields: Any
) -> V2Endpoint:
    endpoint = V2Endpoint(server.url + "/", model, **fields)
    remote.start("m", "1", endpoint)
    await remote.wait_ready("m", "1", timeout_s=30)
    return endpoint


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "file:///etc/passwd",
        "http://",
        "http://user:secret@host:8080",
        "http://host:8080/?q=1",
        "http://host:8080/#f",
        "http://host:99999",
        "host:8080",
    ],
)
def test_only_plain_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(InvalidRequest):
        check_v2_url(url)


def test_endpoints_normalize_and_check_model_and_input_type() -> None:
    endpoint = V2Endpoint("https://mlserver.example:8443/base/", "doubler-1.0")
    assert endpoint.infer_url == "https://mlserver.example:8443/base/v2/models/doubler-1.0/infer"
    with pytest.raises(InvalidRequest, match="model name"):
        V2Endpoint("http://h", "../admin")
    with pytest.raises(InvalidRequest, match="bytes"):
        V2Endpoint("http://h", "m", "bytes")


async def test_a_batch_of_one_shape_is_one_request(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver)
        assert remote.is_ready("m", "1")
        outputs = await remote.predict("m", "1", [[1.0, 2.0], [3.0, 4.5], [0.0, 0.25]], 10)
        assert outputs == [[2.0, 4.0], [6.0, 9.0], [0.0, 0.5]]
        in_flight, predictions, errors, sizes = remote.stats("m", "1")
        assert (in_flight, predictions, errors, sizes) == (0, 3, 0, {3: 1})


async def test_inputs_of_different_shapes_go_one_by_one(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver)
        outputs = await remote.predict("m", "1", [[1.0], [2.0, 3.0], 4.0], 10)
        # MLServer's NumpyCodec answers a tensor of shape [1] as [1, 1]: the server's choice.
        assert outputs == [[2.0], [4.0, 6.0], [8.0]]
        assert remote.stats("m", "1")[3] == {1: 3}
        with pytest.raises(InvalidRequest, match="negative"):  # one failure fails the call
            await remote.predict("m", "1", [[1.0], [-2.0, 3.0], 4.0], 10)


async def test_integers_keep_their_type(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver, input_type="integers")
        assert await remote.predict("m", "1", [[1, 2], [3, 4]], 10) == [[2, 4], [6, 8]]


async def test_the_servers_errors_are_typed(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver)
        with pytest.raises(InvalidRequest, match="negative inputs") as refused:
            await remote.predict("m", "1", [[1.0], [-1.0]], 10)
        assert refused.value.details["status"] == 400
        with pytest.raises(InternalError, match=r"failed \(500\)"):
            await remote.predict("m", "1", [[13.0]], 10)
        with pytest.raises(InvalidRequest, match="ragged"):
            await remote.predict("m", "1", [[[1.0], [2.0, 3.0]]], 10)
        with pytest.raises(InvalidRequest, match="holds a dict"):
            await remote.predict("m", "1", [{"x": 1}], 10)
        assert remote.stats("m", "1")[2] == 3  # inputs the server refused or failed on
        assert await remote.predict("m", "1", [[1.0]], 10) == [[2.0]]  # still serving


async def test_an_unknown_model_is_never_ready_and_not_found(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        remote.start("m", "1", V2Endpoint(mlserver.url, "ghost"))
        with pytest.raises(RequestTimeout, match="ready"):
            await remote.wait_ready("m", "1", timeout_s=0.5)
        assert not remote.is_ready("m", "1")
        with pytest.raises(NotFound, match="'ghost'"):
            await remote.predict("m", "1", [[1.0]], 10)


async def test_a_slow_server_is_a_timeout(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver, model="sleeper")
        with pytest.raises(RequestTimeout):
            await remote.predict("m", "1", [[1.0]], 0.5)


async def test_no_server_is_a_transport_error() -> None:
    async with RemoteV2Versions() as remote:
        remote.start("m", "1", V2Endpoint(f"http://127.0.0.1:{free_port()}", "doubler"))
        with pytest.raises(TransportError, match="cannot be reached"):
            await remote.predict("m", "1", [[1.0]], 10)


async def test_a_stopped_version_is_gone(mlserver: MLServer) -> None:
    async with RemoteV2Versions() as remote:
        await started(remote, mlserver)
        remote.stop("m", "1")
        assert remote.versions() == []
        with pytest.raises(NotFound):
            await remote.predict("m", "1", [[1.0]], 10)


async def test_a_v2_version_deployed_and_predicted_over_the_bus(
    memory_harness: ProxyHarness, mlserver: MLServer
) -> None:
    async with memory_harness.serving() as service:
        operator = service.operator
        with pytest.raises(InvalidRequest, match="http"):
            await operator.deploy_v2("doubled", "1", "doubles", url="ftp://x", model="doubler")
        with pytest.raises(InvalidRequest, match="v2_url"):
            await operator.call(
                "deploy",
                "model.deploy",
                name="doubled",
                version="1",
                input_type="doubles",
                kind="v2",
            )
        deployed = await operator.deploy_v2(
            "doubled", "1", "doubles", url=mlserver.url, model="doubler"
        )
        assert deployed["container_name"] == f"v2:{mlserver.url}/v2/models/doubler"
        await operator.wait_ready("doubled", "1", timeout_s=30)
        await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
        await operator.link_model_to_app("zone-a", "doubled")
        reply = await operator.predict(app="zone-a", input=[1.0, 2.0])
        assert (reply["output"], reply["version"], reply["default"]) == ([2.0, 4.0], "1", False)
        batch = await operator.predict(model="doubled", inputs=[[1.0], [2.0]])
        assert [item["output"] for item in batch["batch_predictions"]] == [[2.0], [4.0]]
        with pytest.raises(InvalidRequest, match="negative"):
            await operator.predict(model="doubled", inputs=[[-1.0]])

    async with memory_harness.serving() as service:  # restarted from the registry
        await service.operator.wait_ready("doubled", "1", timeout_s=30)
        reply = await service.operator.predict(model="doubled", input=[5.0])
        assert reply["output"] == [10.0]
