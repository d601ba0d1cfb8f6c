"""Request/response over pub/sub: replies on the requester's own signal, typed errors, retries
answered from the reply cache, back-pressure and timeouts.

Covers bus/rpc.py (the requester) and bus/responder.py (the service side, instances of one
service in a share group included).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from bus import (
    PO_REPLY,
    PO_REQUEST,
    BusClient,
    BusError,
    Conflict,
    InternalError,
    InvalidRequest,
    InvalidUri,
    NotFound,
    Overloaded,
    PayloadObject,
    Request,
    RequestTimeout,
    error_from_wire,
    reply_uri,
)
from bus.errors import FrameTooLarge, LimitExceeded, TransportError, _all_subclasses
from bus.responder import ServeGate, service_share_group
from bus.rpc import MAX_REPLY_BYTES
from bus.transport import DEFAULT_MAX_FRAME_BYTES
from tests.bus.helpers import (
    TRANSPORTS,
    Member,
    Namespace,
    RecordingTransport,
    bus_url_for,
    connect,
    memory_url,
    next_message,
)
from transports import open_transport

Handler = Callable[[Request], Awaitable[Any]]


@pytest.fixture(params=TRANSPORTS)
def bus_url(request: pytest.FixtureRequest) -> str:
    return bus_url_for(request, request.param)


@dataclass
class Service:
    """A namespace with one service prefix, the service's member and requesters' members."""

    namespace: Namespace = field(default_factory=Namespace)

    @property
    def prefix(self) -> str:
        return self.namespace.uri("s.thermal", "_", "i.modelbus")

    def slot(self, name: str = "predict") -> str:
        return f"{self.prefix}/slot/{name}"

    def server(self) -> Member:
        # P on the reply signals; the slot subscription is the service's own business.
        return self.namespace.member("s.thermal/_/i.modelbus/*", "C*P")

    def requester(self) -> Member:
        return self.namespace.member("s.thermal/_/i.modelbus/slot/+", "P")


@asynccontextmanager
async def serving(
    client: BusClient, pattern: str, handler: Handler, **options: Any
) -> AsyncIterator[BusClient]:
    tg = client.require_task_group()
    await tg.start(functools.partial(client.serve, pattern, handler, **options))
    yield client


async def echo(request: Request) -> Any:
    return {"echo": request.body, "from": request.origin_text, "uri": request.uri}


@pytest.mark.parametrize(
    ("request_uri", "expected"),
    [
        ("ns/svc/slot/predict", "ns/svc/signal/reply/KEY"),
        ("ns/a/b/i.x/slot/admin", "ns/a/b/i.x/signal/reply/KEY"),
        ("ns/slot/x", "ns/signal/reply/KEY"),
    ],
)
def test_reply_uri(request_uri: str, expected: str) -> None:
    assert reply_uri(request_uri, "KEY") == expected


@pytest.mark.parametrize("request_uri", ["ns/svc/signal/x", "ns/slot", "slot/x", "ns/svc/slot"])
def test_reply_uri_needs_a_slot(request_uri: str) -> None:
    with pytest.raises(InvalidUri):
        reply_uri(request_uri, "KEY")


@pytest.mark.parametrize("cls", _all_subclasses(BusError))
def test_every_error_class_survives_the_wire(cls: type[BusError]) -> None:
    error = cls("what happened", limit=3, names=["a"])
    wire = error.to_wire()
    again = error_from_wire(wire["code"], wire["message"], wire["details"])
    assert type(again) is cls
    assert again.message == "what happened"
    assert again.details == {"limit": 3, "names": ["a"]} | (
        {"code": "error"} if cls is BusError else {}
    )


def test_unknown_error_codes_become_bus_error_keeping_the_code() -> None:
    again = error_from_wire("quota_exceeded", "too many", {"n": 1})
    assert type(again) is BusError
    assert again.details == {"n": 1, "code": "quota_exceeded"}
    assert type(error_from_wire(None, "x")) is BusError


async def test_request_returns_the_handler_result(bus_url: str) -> None:
    service = Service()
    requester = service.requester()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, f"{service.prefix}/slot/+", echo),
        connect(bus_url, requester) as client,
    ):
        result = await client.request(service.slot(), {"zone": "A", "steps": [1, 2]})
        second = await client.request(service.slot("admin"), "ping")
    assert result == {
        "echo": {"zone": "A", "steps": [1, 2]},
        "from": requester.key,
        "uri": service.slot(),
    }
    assert second["echo"] == "ping" and second["uri"] == service.slot("admin")


async def test_replies_go_to_the_requesters_own_signal(bus_url: str) -> None:
    service = Service()
    alice, bob = service.requester(), service.requester()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), echo),
        connect(bus_url, service.namespace.as_member) as observer,
        observer.subscribe(f"{service.prefix}/signal/reply/*") as replies,
        connect(bus_url, alice) as alice_client,
        connect(bus_url, bob) as bob_client,
    ):
        assert (await alice_client.request(service.slot(), "a", request_id="same"))["echo"] == "a"
        assert (await bob_client.request(service.slot(), "b", request_id="same"))["echo"] == "b"
        seen = [await next_message(replies) for _ in range(2)]
    assert [m.uri for m in seen] == [
        f"{service.prefix}/signal/reply/{alice.key}",
        f"{service.prefix}/signal/reply/{bob.key}",
    ]
    assert all(m.origin == server.entity.public_key for m in seen)
    assert [m.value(PO_REPLY)["result"]["echo"] for m in seen] == ["a", "b"]


async def test_a_typed_error_from_the_handler_arrives_typed(bus_url: str) -> None:
    async def missing(request: Request) -> Any:
        raise NotFound(f"no model {request.body['model']!r}", model=request.body["model"])

    service = Service()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), missing),
        connect(bus_url, service.requester()) as client,
    ):
        with pytest.raises(NotFound) as caught:
            await client.request(service.slot(), {"model": "thermal-v9"})
    assert caught.value.message == "no model 'thermal-v9'"
    assert caught.value.details == {"model": "thermal-v9"}


async def test_a_crashing_handler_is_an_internal_error_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "password=hunter2 at /srv/secret/path"

    async def crash(request: Request) -> Any:
        raise RuntimeError(secret)

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), crash),
        connect(url, service.requester()) as client,
    ):
        with pytest.raises(InternalError) as caught:
            await client.request(service.slot(), {})
        with pytest.raises(InternalError):  # the service survived and still answers
            await client.request(service.slot(), {})
    assert secret not in caught.value.message + repr(caught.value.details)
    assert caught.value.details == {}
    logged = [r for r in caplog.records if r.name == "bus.responder" and r.exc_info]
    assert logged and secret in str(logged[0].exc_info[1])  # the service's log has it


async def test_a_retried_request_id_is_answered_from_the_cache(bus_url: str) -> None:
    calls: list[Any] = []

    async def counted(request: Request) -> Any:
        calls.append(request.body)
        return len(calls)

    service = Service()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), counted),
        connect(bus_url, service.requester()) as client,
    ):
        first = await client.request(service.slot(), "x", request_id="req-1")
        retried = await client.request(service.slot(), "x", request_id="req-1")
        other = await client.request(service.slot(), "y", request_id="req-2")
    assert (first, retried, other) == (1, 1, 2)
    assert calls == ["x", "y"]


async def test_errors_are_cached_like_results() -> None:
    calls = 0

    async def fails_once(request: Request) -> Any:
        nonlocal calls
        calls += 1
        raise NotFound("gone")

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), fails_once),
        connect(url, service.requester()) as client,
    ):
        for _ in range(3):
            with pytest.raises(NotFound):
                await client.request(service.slot(), None, request_id="r")
    assert calls == 1


async def test_a_retry_while_the_first_still_runs_gets_the_first_reply() -> None:
    release = anyio.Event()
    started = anyio.Event()
    calls = 0

    async def slow(request: Request) -> Any:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "done"

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), slow),
        connect(url, service.requester()) as client,
    ):
        with pytest.raises(RequestTimeout):
            await client.request(service.slot(), None, request_id="r", timeout_s=0.2)
        await started.wait()
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def retry() -> None:
                results.append(await client.request(service.slot(), None, request_id="r"))

            tg.start_soon(retry)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert results == ["done"]
    assert calls == 1


async def test_the_same_id_twice_at_once_on_one_requester_is_a_conflict() -> None:
    release = anyio.Event()

    async def slow(request: Request) -> Any:
        await release.wait()
        return "ok"

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), slow),
        connect(url, service.requester()) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[Any] = []

        async def first() -> None:
            results.append(await client.request(service.slot(), None, request_id="dup"))

        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Conflict):
            await client.request(service.slot(), None, request_id="dup")
        release.set()
    assert results == ["ok"]


async def test_a_saturated_service_answers_overloaded() -> None:
    release = anyio.Event()
    started = anyio.Event()
    calls = 0

    async def slow(request: Request) -> Any:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return request.body

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), slow, max_concurrency=1),
        connect(url, service.requester()) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[Any] = []

        async def first() -> None:
            results.append(await client.request(service.slot(), "first", request_id="r1"))

        tg.start_soon(first)
        await started.wait()
        with pytest.raises(Overloaded) as caught:
            await client.request(service.slot(), "second", request_id="r2")
        assert caught.value.details == {"limit": 1}
        release.set()
    assert results == ["first"]
    assert calls == 1


async def test_overloaded_is_not_cached_so_a_retry_runs() -> None:
    release = anyio.Event()
    started = anyio.Event()
    calls: list[str] = []

    async def slow(request: Request) -> Any:
        calls.append(request.body)
        if request.body == "first":
            started.set()
            await release.wait()
        return request.body

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), slow, max_concurrency=1),
        connect(url, service.requester()) as client,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.request, service.slot(), "first")
            await started.wait()
            with pytest.raises(Overloaded):
                await client.request(service.slot(), "second", request_id="r2")
            release.set()
        assert await client.request(service.slot(), "second", request_id="r2") == "second"
    assert calls == ["first", "second"]


async def test_nobody_serving_is_a_request_timeout(bus_url: str) -> None:
    service = Service()
    async with connect(bus_url, service.requester()) as client:
        with pytest.raises(RequestTimeout) as caught:
            await client.request(service.slot(), None, request_id="lost", timeout_s=0.3)
    assert caught.value.details == {"uri": service.slot(), "id": "lost"}


async def test_a_service_without_rights_on_the_reply_signal_cannot_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Service()
    mute = service.namespace.member("s.thermal/_/i.modelbus/slot/*", "C*")
    url = memory_url()
    async with (
        connect(url, mute) as server,
        serving(server, service.slot(), echo),
        connect(url, service.requester()) as client,
    ):
        with pytest.raises(RequestTimeout):
            await client.request(service.slot(), None, timeout_s=0.3)
    assert any("could not reply" in r.getMessage() for r in caplog.records)


async def test_a_requester_subscribed_widely_still_gets_its_replies() -> None:
    """The reply arrives on two subscriptions of the requester (its reply route and its own
    wide subscription): both must accept it."""
    service = Service()
    url = memory_url()
    owner = service.namespace.as_member
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), echo),
        connect(url, owner) as client,
        client.subscribe(service.namespace.uri("*")) as everything,
    ):
        assert (await client.request(service.slot(), 1))["echo"] == 1
        assert (await client.request(service.slot(), 2))["echo"] == 2
        topics = [(await next_message(everything)).uri for _ in range(4)]
    reply_to = f"{service.prefix}/signal/reply/{owner.key}"
    assert topics == [service.slot(), reply_to, service.slot(), reply_to]
    assert not client.verifier.rejected


async def _publish_raw_request(client: BusClient, uri: str, value: Any) -> None:
    await client.publish(uri, PayloadObject.msgpack(value, PO_REQUEST))


async def test_malformed_requests(caplog: pytest.LogCaptureFixture) -> None:
    """No id: nothing to answer (counted as ``invalid_request``, logged at most once a second).
    An id without a body: invalid_request."""
    service = Service()
    requester = service.requester()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), echo),
        connect(url, service.namespace.as_member) as observer,
        observer.subscribe(f"{service.prefix}/signal/reply/*") as replies,
        connect(url, requester) as client,
    ):
        await _publish_raw_request(client, service.slot(), {"body": 1})
        await _publish_raw_request(client, service.slot(), {"id": "x" * 129, "body": 1})
        await _publish_raw_request(client, service.slot(), ["not", "a", "map"])
        await client.publish(service.slot(), PayloadObject.text("plain text"))
        await _publish_raw_request(client, service.slot(), {"id": "no-body"})
        assert await client.request(service.slot(), "fine", request_id="sentinel")
        seen = [(await next_message(replies)).value(PO_REPLY) for _ in range(2)]
    assert [reply["id"] for reply in seen] == ["no-body", "sentinel"]
    assert seen[0]["ok"] is False and seen[0]["error"]["code"] == InvalidRequest.code
    malformed = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(malformed) == 1  # the one with an id; the others are counted
    assert server.verifier.rejected == {"invalid_request": 4}


async def attachment_echo(request: Request) -> Any:
    """The attachment as the handler sees it: bytes, and the digest the envelope verified."""
    po = request.attachment
    if po is None:
        return None
    return {"number": po.number, "data": po.data, "sha256": po.sha256}


@pytest.mark.parametrize("size", [10, 70_000])
async def test_an_attachment_reaches_the_handler_next_to_the_body(bus_url: str, size: int) -> None:
    """Up to 64 KiB it travels inline (no digest); above, detached, with its verified SHA-256."""
    service = Service()
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), attachment_echo),
        connect(bus_url, service.requester()) as client,
    ):
        attached = PayloadObject.binary(data, "1.0.0.7")
        result = await client.request(service.slot(), {"op": "x"}, attachment=attached)
        assert await client.request(service.slot(), {"op": "x"}) is None
    digest = hashlib.sha256(data).digest() if size > 65_536 else None
    assert result == {"number": "1.0.0.7", "data": data, "sha256": digest}


async def test_a_wrong_known_digest_makes_the_service_reject_the_frame() -> None:
    """A sender's precomputed digest is trusted by sealing only: the receiver checks the bytes,
    rejects the frame as a bad signature and does not answer (the requester times out)."""
    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), attachment_echo),
        connect(url, service.requester()) as client,
    ):
        lying = PayloadObject.binary(b"y" * 70_000, sha256=hashlib.sha256(b"other").digest())
        with pytest.raises(RequestTimeout):
            await client.request(service.slot(), 1, attachment=lying, timeout_s=0.5)
        assert server.verifier.rejected == {"bad_signature": 1}


async def test_anything_but_one_binary_po_after_the_request_is_an_invalid_request() -> None:
    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), attachment_echo),
        connect(url, service.namespace.as_member) as observer,
        observer.subscribe(f"{service.prefix}/signal/reply/*") as replies,
        connect(url, service.requester()) as client,
    ):
        with pytest.raises(InvalidRequest):  # refused locally, before publishing
            await client.request(service.slot(), 1, attachment=PayloadObject.text("no"))
        for index, extra in enumerate(
            [
                [PayloadObject.text("not binary")],
                [PayloadObject.binary(b"a"), PayloadObject.binary(b"b")],
            ]
        ):
            request = PayloadObject.msgpack({"id": f"r{index}", "body": 1}, PO_REQUEST)
            await client.publish(service.slot(), [request, *extra])
        seen = [(await next_message(replies)).value(PO_REPLY) for _ in range(2)]
    assert [reply["id"] for reply in seen] == ["r0", "r1"]
    for reply in seen:
        assert reply["ok"] is False and reply["error"]["code"] == InvalidRequest.code
        assert "at most one attachment" in reply["error"]["message"]


# -- limits and retries ---------------------------------------------------------------------------

OVER_THE_LIMIT = b"x" * (DEFAULT_MAX_FRAME_BYTES + 1)


async def test_a_request_over_the_frame_limit_is_refused_at_once_and_the_client_goes_on(
    bus_url: str,
) -> None:
    calls: list[Any] = []

    async def counted(request: Request) -> Any:
        calls.append(len(request.body))
        return len(calls)

    service = Service()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), counted),
        connect(bus_url, service.requester()) as client,
    ):
        with pytest.raises(FrameTooLarge) as refused:
            await client.request(service.slot(), OVER_THE_LIMIT, request_id="big")
        after = await client.request(service.slot(), b"small", request_id="big")  # id is free
    assert refused.value.details["limit"] == DEFAULT_MAX_FRAME_BYTES
    assert "chunked transfer" in refused.value.message
    assert (after, calls) == (1, [5])


async def test_a_reply_over_the_frame_limit_is_answered_limit_exceeded(bus_url: str) -> None:
    calls = 0

    async def huge(request: Request) -> Any:
        nonlocal calls
        calls += 1
        return OVER_THE_LIMIT if request.body == "huge" else "fine"

    service = Service()
    async with (
        connect(bus_url, service.server()) as server,
        serving(server, service.slot(), huge),
        connect(bus_url, service.requester()) as client,
    ):
        for _ in range(2):  # the second time from the cache: the error reply was cached
            with pytest.raises(LimitExceeded) as refused:
                await client.request(service.slot(), "huge", request_id="h", timeout_s=30)
            assert refused.value.code == "limit_exceeded"
            assert refused.value.details == {
                "size": len(
                    PayloadObject.msgpack({"id": "h", "ok": True, "result": OVER_THE_LIMIT}).data
                ),
                "limit": MAX_REPLY_BYTES,
            }
        assert await client.request(service.slot(), "small") == "fine"
    assert calls == 2


class LosingTransport(RecordingTransport):
    """Drops the first frame published on ``topic_part`` (a lost request or reply)."""

    def __init__(self, url: str, topic_part: str | None) -> None:
        super().__init__(open_transport(url))
        self.topic_part = topic_part
        self.lost: list[str] = []

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        if self.topic_part is not None and self.topic_part in topic and not self.lost:
            self.lost.append(topic)
            return
        await super().publish(topic, frame, persist=persist)


@pytest.mark.parametrize("lost", ["request", "reply"])
async def test_a_lost_frame_is_sent_again_under_the_same_id_and_answered_once(lost: str) -> None:
    calls = 0

    async def counted(request: Request) -> Any:
        nonlocal calls
        calls += 1
        return calls

    service, url = Service(), memory_url()
    server_member, requester = service.server(), service.requester()
    server_transport = LosingTransport(url, "/signal/reply/" if lost == "reply" else None)
    client_transport = LosingTransport(url, "/slot/" if lost == "request" else None)
    async with (
        BusClient(server_transport, server_member.entity, proofs=server_member.proofs) as server,
        serving(server, service.slot(), counted),
        BusClient(client_transport, requester.entity, proofs=requester.proofs) as client,
    ):
        # A retry comes after a third of the timeout when no reply came.
        result = await client.request(service.slot(), "x", request_id="r", timeout_s=3)
    assert (result, calls) == (1, 1)
    assert len(server_transport.lost + client_transport.lost) == 1
    sent = client_transport.published.count(service.slot()) + len(client_transport.lost)
    assert sent >= 2


class BrokenTransport(RecordingTransport):
    """A transport whose publishes all fail as a lost connection would."""

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        self.published.append(topic)
        raise TransportError("lost the connection to the broker")


async def test_a_request_that_cannot_be_sent_is_retried_then_times_out_naming_why() -> None:
    service = Service()
    requester = service.requester()
    transport = BrokenTransport(open_transport(memory_url()))
    async with BusClient(transport, requester.entity, proofs=requester.proofs) as client:
        with pytest.raises(RequestTimeout, match="lost the connection to the broker"):
            await client.request(service.slot(), "x", timeout_s=2.5)
    assert transport.published.count(service.slot()) >= 2  # sent again after a failed send


async def test_a_reply_forged_by_another_publisher_is_dropped_and_the_real_one_arrives() -> None:
    """Mallory may publish on the requester's reply signal (a grant on the whole prefix): with
    the service's key pinned, her reply is dropped and counted; the service's own arrives."""
    release = anyio.Event()
    seen = anyio.Event()

    async def slow(request: Request) -> Any:
        seen.set()
        await release.wait()
        return 3.0

    service = Service()
    url = memory_url()
    server_member = service.server()
    async with (
        connect(url, server_member) as server,
        serving(server, service.slot(), slow),
        connect(url, service.requester()) as client,
        connect(url, service.server()) as mallory,  # P on every reply signal of the prefix
    ):
        client.expect_replies_from(service.slot(), server_member.entity.public_key)
        results: list[Any] = []

        async def ask() -> None:
            results.append(await client.request(service.slot(), None, request_id="r1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await seen.wait()
            forged = {"id": "r1", "ok": True, "result": 999.0}
            target = reply_uri(service.slot(), client.key_text)
            for _ in range(3):
                await mallory.publish(target, PayloadObject.msgpack(forged, PO_REPLY))
            requester = client._requester
            assert requester is not None
            with anyio.fail_after(10):
                while requester.foreign_replies < 3:  # noqa: ASYNC110 (counted on delivery)
                    await anyio.sleep(0.01)
            assert results == []  # none of the forgeries was taken for the reply
            release.set()
    assert results == [3.0]


async def test_one_sender_cannot_take_every_slot_of_a_responder() -> None:
    """Issue 12 item 9: at most ``max_per_sender`` requests of one sender run at once; its next
    one is answered ``overloaded`` (per sender) while another sender's still runs."""
    release = anyio.Event()
    running = 0

    async def slow(request: Request) -> Any:
        nonlocal running
        running += 1
        await release.wait()
        return request.origin_text

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        serving(server, service.slot(), slow, max_concurrency=8, max_per_sender=2),
        connect(url, service.requester()) as greedy,
        connect(url, service.requester()) as other,
    ):
        answers: list[Any] = []

        async def ask(client: BusClient, rid: str) -> None:
            answers.append(await client.request(service.slot(), None, request_id=rid))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, greedy, "g1")
            tg.start_soon(ask, greedy, "g2")
            with anyio.fail_after(10):
                while running < 2:  # noqa: ASYNC110 (the handler offers no event)
                    await anyio.sleep(0.01)
            with pytest.raises(Overloaded) as busy:
                await greedy.request(service.slot(), None, request_id="g3")
            assert busy.value.details == {"limit": 2, "per_sender": True}
            tg.start_soon(ask, other, "o1")
            with anyio.fail_after(10):
                while running < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            release.set()
        assert sorted(answers) == sorted([greedy.key_text] * 2 + [other.key_text])
        assert await greedy.request(service.slot(), None, request_id="g3") == greedy.key_text


async def test_stopping_a_responder_cancels_the_handlers_it_runs() -> None:
    """Handlers run as tasks of the responder: when it stops, a handler still running is
    cancelled (its cleanup runs) and the responder waits for it to end."""
    started, cleaned_up = anyio.Event(), anyio.Event()

    async def stuck(request: Request) -> Any:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up.set()

    service = Service()
    url = memory_url()
    async with (
        connect(url, service.server()) as server,
        connect(url, service.requester()) as client,
    ):
        async with anyio.create_task_group() as serving_group:
            await serving_group.start(server.serve, service.slot(), stuck)
            client.require_task_group().start_soon(
                functools.partial(client.request, service.slot(), "x", timeout_s=30)
            )
            with anyio.fail_after(10):
                await started.wait()
            serving_group.cancel_scope.cancel()
        assert cleaned_up.is_set()


@pytest.mark.parametrize("kind", ["memory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
async def test_instances_in_one_share_group_answer_each_request_once(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """Three responders (one service's instances, one key) in the service's share group: each
    request runs on one of them, and all of them take some."""
    bus_url = bus_url_for(request, kind)
    service = Service()
    member = service.server()
    group = service_share_group(service.namespace.uri("s.thermal", "_"))
    ran: list[int] = []

    def counting(index: int) -> Handler:
        async def handler(request: Request) -> Any:
            ran.append(index)
            return request.body

        return handler

    async with (
        connect(bus_url, member) as first,
        connect(bus_url, member) as second,
        connect(bus_url, member) as third,
        connect(bus_url, service.requester()) as client,
    ):
        for index, server in enumerate((first, second, third)):
            await server.require_task_group().start(
                functools.partial(server.serve, service.slot(), counting(index), share_group=group)
            )
        answers = [await client.request(service.slot(), n) for n in range(12)]
    assert answers == list(range(12))
    assert len(ran) == 12 and set(ran) == {0, 1, 2}


def test_the_share_group_of_a_service_is_fixed_by_its_uri() -> None:
    group = service_share_group("NS/s.modelbus/_")
    assert group == "modelbus-" + hashlib.sha256(b"NS/s.modelbus/_").hexdigest()[:24]
    assert service_share_group("NS/s.modelbus/other") != group


async def test_a_withdrawing_instance_finishes_its_requests_and_refuses_none() -> None:
    """Draining with ``withdraw``: the first responder leaves the share group and still answers
    the request it was running; every later request reaches the second; nothing is refused."""
    bus_url = memory_url()
    service = Service()
    member = service.server()
    group = service_share_group(service.namespace.uri("s.thermal", "_"))
    gate = ServeGate()
    started, release = anyio.Event(), anyio.Event()
    ran: list[str] = []

    async def first_handler(request: Request) -> Any:
        started.set()
        await release.wait()
        ran.append(f"first {request.body}")
        return request.body

    async def second_handler(request: Request) -> Any:
        ran.append(f"second {request.body}")
        return request.body

    async with (
        connect(bus_url, member) as first,
        connect(bus_url, member) as second,
        connect(bus_url, service.requester()) as client,
        anyio.create_task_group() as tasks,
    ):
        serve = functools.partial(first.serve, service.slot(), first_handler, gate=gate)
        await first.require_task_group().start(functools.partial(serve, share_group=group))
        await second.require_task_group().start(
            functools.partial(second.serve, service.slot(), second_handler, share_group=group)
        )
        results: list[Any] = []

        async def ask(body: Any) -> None:
            results.append(await client.request(service.slot(), body))

        tasks.start_soon(ask, "slow")  # the memory hub's turn: the first responder
        await started.wait()
        draining: list[int] = []

        async def drain() -> None:
            draining.append(await gate.drain(5, withdraw=True))

        tasks.start_soon(drain)
        for index in range(4):
            await ask(index)  # each reaches the second: the first has withdrawn
        release.set()
    assert draining == [0] and gate.refused == {}
    assert sorted(map(str, results)) == ["0", "1", "2", "3", "slow"]
    assert ran[:4] == ["second 0", "second 1", "second 2", "second 3"] and ran[4] == "first slow"
