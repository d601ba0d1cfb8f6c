"""Who may do what on the service: grants decide, on the client *and* on the service.

The viewer holds P on ``slot/predict`` only: it predicts, and its client refuses to send a deploy
(no grant covers it). Frames made by hand — sealed with the sender's own key and whatever proof it
has, published straight on the transport — show that the service refuses them too, answering with
the typed error on the sender's reply signal, and that nothing was uploaded or registered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from bus import (
    PO_REPLY,
    PO_REQUEST,
    BusClient,
    Entity,
    Grant,
    OutOfScope,
    PayloadObject,
    error_from_wire,
    reply_uri,
)
from bus import envelope as envelopes
from bus.transport import Transport
from container_manager import ServiceClient
from tests.proxy.conftest import ProxyHarness, Service
from transports import open_transport

REPLY_WAIT_S = 15.0


async def refusal(
    harness: ProxyHarness, sender: Entity, proof: Sequence[Grant], slot: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Publish a request made by hand on ``slot`` and return the error the service replies."""
    uri = harness.slot(slot)
    async with (
        BusClient(open_transport(harness.bus_url), sender) as bus,
        bus.subscribe(reply_uri(uri, sender.key_text), check_scope=False) as replies,
    ):
        rid = uuid.uuid4().hex
        request = PayloadObject.msgpack({"id": rid, "body": body}, PO_REQUEST)
        frame = envelopes.seal(
            sender, uri, (request,), proof=tuple(grant.encode() for grant in proof)
        )
        await bus.transport.publish(uri, frame)
        with anyio.fail_after(REPLY_WAIT_S):
            async for message in replies:
                reply = message.value(PO_REPLY)
                if reply["id"] == rid:
                    assert message.origin_text == harness.owner.key_text
                    assert reply["ok"] is False, reply
                    return dict(reply["error"])
    raise AssertionError("the reply subscription ended")


class RecordingTransport:
    """A transport that remembers the topics published through it."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.topics: list[str] = []

    async def connect(self, **options: Any) -> None:
        await self.inner.connect(**options)

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        self.topics.append(topic)
        await self.inner.publish(topic, frame, persist=persist)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def nothing_uploaded(service: Service) -> bool:
    return not any((service.data_dir / "spool").iterdir()) and not any(
        (service.data_dir / "artifacts").iterdir()
    )


@pytest.mark.slow
async def test_the_viewer_predicts_but_cannot_deploy(memory_harness: ProxyHarness) -> None:
    harness = memory_harness

    def double_sum(inputs: list[list[float]]) -> list[float]:
        return [2 * sum(x) for x in inputs]

    with anyio.fail_after(60):
        async with harness.serving() as service:
            operator = service.operator
            await operator.register_application("zone-a", "doubles", "-1", 10_000_000)
            deployed = await operator.deploy_function("m", "1", double_sum, "doubles")
            await operator.link_model_to_app("zone-a", "m")
            await operator.wait_ready("m", "1")
            artifact = deployed["container_name"].removeprefix("closure@sha256:")

            reply = await service.viewer.predict(app="zone-a", input=[1.0, 2.0])
            assert (reply["output"], reply["default"]) == (6.0, False)
            reply = await service.viewer.predict(model="m", version="1", input=[4.0])
            assert reply["output"] == 8.0

            recording = RecordingTransport(open_transport(harness.bus_url))
            async with BusClient(
                recording, harness.viewer, proofs=[[harness.viewer_grant()]]
            ) as bus:
                viewer = ServiceClient(bus, harness.service_uri)
                with pytest.raises(OutOfScope):
                    await viewer.deploy_function("m", "2", double_sum, "doubles")
                with pytest.raises(OutOfScope):
                    await viewer.deploy_artifact("m", "2", "doubles", artifact)
                with pytest.raises(OutOfScope):
                    await viewer.stop_models(["m"])
                assert (await viewer.predict(model="m", input=[1.0]))["output"] == 2.0
            assert recording.topics == [harness.slot("predict")]  # refused before sending

            viewer_proof = [harness.viewer_grant()]
            deploy = {
                "op": "model.deploy",
                "name": "m",
                "version": "2",
                "input_type": "doubles",
                "artifact": artifact,
            }
            begin = {
                "op": "upload.begin",
                "name": "x",
                "kind": "closure",
                "size": 3,
                "sha256": "0" * 64,
                "chunk_size": 1024,
            }
            for slot, body in (
                ("deploy", deploy),
                ("deploy", begin),
                ("admin", {"op": "model.stop", "names": ["m"]}),
            ):
                error = await refusal(harness, harness.viewer, viewer_proof, slot, body)
                assert error["code"] == "out_of_scope", error
                assert isinstance(error_from_wire(**error), OutOfScope)

            assert await operator.get_all_models() == ["m:1"]
            assert not any((service.data_dir / "spool").iterdir())
            assert (await operator.predict(app="zone-a", input=[1.0]))["output"] == 2.0


def _cases(harness: ProxyHarness) -> list[tuple[str, Entity, list[Grant]]]:
    """(expected error code, sender, proof) for requests on ``slot/deploy``."""
    everything = f"{harness.service_uri}/*"
    stranger = Entity.generate(comment="stranger")
    consumer = Entity.generate(comment="may consume, not publish")
    expired_member = Entity.generate(comment="grant expired")
    now = time.time_ns()
    return [
        ("out_of_scope", harness.viewer, [harness.viewer_grant()]),
        ("permission_missing", consumer, [harness.grant(consumer, everything, "C*")]),
        ("broken_chain", stranger, []),
        ("untrusted_root", stranger, [harness.grant(stranger, everything, "C*P", giver=stranger)]),
        ("broken_chain", stranger, [harness.operator_grant()]),  # granted to someone else
        (
            "grant_expired",
            expired_member,
            [harness.grant(expired_member, everything, "C*P", expires_ns=now - 10**9)],
        ),
    ]


async def test_the_service_refuses_unauthorized_frames(harness: ProxyHarness) -> None:
    upload: dict[str, Any] = {
        "name": "payload",
        "kind": "closure",
        "size": 5,
        "sha256": "a" * 64,
        "chunk_size": 1024,
    }
    with anyio.fail_after(60):
        async with harness.serving() as service:
            for code, sender, proof in _cases(harness):
                begin = {"op": "upload.begin"} | upload
                error = await refusal(harness, sender, proof, "deploy", begin)
                assert error["code"] == code, (code, error)
                assert error["message"]

            assert nothing_uploaded(service)
            assert await service.operator.get_all_models() == []
            opened = await service.operator.call("deploy", "upload.begin", **upload)
            assert opened["next_index"] == 0  # the service still serves the operator
