"""A running service under attack: hand-made frames published straight on the transport.

Every bad frame is rejected with its own typed error, counted per code and logged; an authentic
sender gets an error reply with that code on its own reply signal; forgeries, replays and frames
that do not even decode get no reply; no secret seed ever appears in a log record or a reply; and
afterwards the service still answers a good request correctly.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from bus import (
    PO_REPLY,
    PO_REQUEST,
    BusClient,
    Message,
    MessageStream,
    PayloadObject,
    Request,
    Verifier,
    codec,
)
from bus import envelope as envelopes
from bus.transport import Transport
from tests.bus.helpers import (
    SEEDS,
    TRANSPORTS,
    Member,
    Namespace,
    body_fields,
    bus_url_for,
    connect,
    hand_frame,
    make_grant,
    memory_url,
    new_entity,
    next_message,
    raw_body,
)
from transports import open_transport

MAX_FRAME = 256 * 1024
SKEW_S = 30


@pytest.fixture(params=TRANSPORTS)
def bus_url(request: pytest.FixtureRequest) -> str:
    return bus_url_for(request, request.param)


async def echo(request: Request) -> Any:
    return {"echo": request.body, "from": request.origin_text}


def request_po(rid: str, body: Any = "payload") -> PayloadObject:
    return PayloadObject.msgpack({"id": rid, "body": body}, PO_REQUEST)


@dataclass
class Harness:
    """A served slot, a well-behaved requester, an observer of every reply, a raw transport."""

    url: str
    namespace: Namespace = field(default_factory=Namespace)
    server: BusClient = field(init=False)
    good: Member = field(init=False)
    good_client: BusClient = field(init=False)
    replies: MessageStream = field(init=False)
    raw: Transport = field(init=False)
    seen_replies: list[Message] = field(default_factory=list)
    collected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.namespace.uri("s.model", "_", "i.modelbus")

    @property
    def slot(self) -> str:
        return f"{self.prefix}/slot/predict"

    def sender(self, suffix: str, perms: str, **options: Any) -> Member:
        return self.namespace.member(suffix, perms, **options)

    def request_frame(self, member: Member, rid: str, **options: Any) -> bytes:
        options.setdefault("proof", member.proof)
        uri = options.pop("uri", self.slot)
        pos = options.pop("pos", [request_po(rid)])
        return envelopes.seal(member.entity, uri, pos, **options)

    async def send(self, frame: bytes) -> None:
        await self.raw.publish(self.slot, frame)

    async def settle(self, rid: str) -> list[dict[str, Any]]:
        """Send a good request on the raw transport, behind everything sent so far, and read
        replies up to its own: the server handles frames in order and answers a rejection
        before it reads the next frame, so every reply to the earlier frames is in by then."""
        await self.send(self.request_frame(self.good, rid))
        return await self.replies_until(rid)

    async def replies_until(self, rid: str) -> list[dict[str, Any]]:
        """Every reply the observer has seen, read up to the one with id ``rid``."""
        while not any(reply["id"] == rid for reply in self.collected):
            message = await next_message(self.replies)
            self.seen_replies.append(message)
            self.collected.append({"uri": message.uri, **message.value(PO_REPLY)})
        return self.collected


@asynccontextmanager
async def attacked_service(url: str) -> AsyncIterator[Harness]:
    harness = Harness(url)
    ns = harness.namespace
    async with AsyncExitStack() as stack:
        server_member = ns.member("s.model/_/i.modelbus/*", "C*P")
        verifier = Verifier(max_frame_bytes=MAX_FRAME, skew_s=SKEW_S)
        harness.server = await stack.enter_async_context(
            connect(url, server_member, verifier=verifier)
        )
        await harness.server.require_task_group().start(harness.server.serve, harness.slot, echo)
        observer = await stack.enter_async_context(connect(url, ns.as_member))
        harness.replies = await stack.enter_async_context(
            observer.subscribe(f"{harness.prefix}/signal/reply/*")
        )
        harness.good = ns.member("s.model/_/i.modelbus/slot/+", "P")
        harness.good_client = await stack.enter_async_context(connect(url, harness.good))
        harness.raw = open_transport(url)
        await harness.raw.connect()
        stack.push_async_callback(harness.raw.close)
        yield harness


# -- the attacks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """A bad frame, the code it must be rejected with, and who (if anyone) gets an error reply."""

    frame: bytes
    code: str
    reply_to: Member | None = None
    rid: str = ""
    before: bytes | None = None  # a genuine frame published first (the replay's original)


def forged_signature(h: Harness) -> Attack:
    mallory = new_entity("mallory")
    body = codec.pack(
        body_fields(h.good.entity, h.slot, [request_po("forged")], proof=h.good.proof)
    )
    return Attack(hand_frame(mallory, body), "bad_signature")


def chain_not_rooted_at_the_namespace(h: Harness) -> Attack:
    rogue = new_entity("rogue")
    member = Member(rogue, (make_grant(rogue, rogue, h.namespace.uri("*"), "P"),))
    return Attack(h.request_frame(member, "rogue"), "untrusted_root", member, "rogue")


def expired_grant(h: Harness) -> Attack:
    member = h.sender("s.model/*", "P", expires_ns=time.time_ns() - 1)
    return Attack(h.request_frame(member, "expired"), "grant_expired", member, "expired")


def ttl_exceeded(h: Harness) -> Attack:
    member = h.sender("s.model/*", "P", ttl=0).delegate(h.namespace.uri("s.model", "*"), "P")
    return Attack(h.request_frame(member, "ttl"), "ttl_exceeded", member, "ttl")


def missing_permission(h: Harness) -> Attack:
    member = h.sender("s.model/*", "C*")
    return Attack(h.request_frame(member, "perm"), "permission_missing", member, "perm")


def out_of_scope_uri(h: Harness) -> Attack:
    member = h.sender("s.other/*", "P")
    return Attack(h.request_frame(member, "scope"), "out_of_scope", member, "scope")


def replayed_frame(h: Harness) -> Attack:
    original = h.request_frame(h.good, "replayed")
    return Attack(original, "replayed_nonce", before=original)


def skewed_timestamp(h: Harness) -> Attack:
    frame = h.request_frame(h.good, "skewed", ts_ns=time.time_ns() - 4 * SKEW_S * 10**9)
    return Attack(frame, "clock_skew", h.good, "skewed")


def future_timestamp(h: Harness) -> Attack:
    frame = h.request_frame(h.good, "future", ts_ns=time.time_ns() + 4 * SKEW_S * 10**9)
    return Attack(frame, "clock_skew", h.good, "future")


def signed_for_another_topic(h: Harness) -> Attack:
    """Signed for one URI, published on another: rejected, and never answered — the reply's
    place would come from the signed URI, which the sender chose (PROTOCOL.md §11)."""
    frame = h.request_frame(h.good, "elsewhere", uri=f"{h.prefix}/slot/admin")
    return Attack(frame, "verification")


def garbage_bytes(h: Harness) -> Attack:
    return Attack(b"\xc1 this is not msgpack \x00\xff", "decode")


def truncated_msgpack(h: Harness) -> Attack:
    return Attack(h.request_frame(h.good, "truncated")[:-20], "decode")


def bad_utf8_in_the_uri(h: Harness) -> Attack:
    fields = body_fields(h.good.entity, "placeholder", [request_po("utf8")], proof=h.good.proof)
    packed = [codec.pack(value) for value in fields]
    bad = h.slot.encode()[:-7] + b"\xff\xfe\xfd"
    packed[1] = b"\xd9" + bytes([len(bad)]) + bad  # str 8 holding invalid UTF-8
    return Attack(hand_frame(h.good.entity, raw_body(*packed)), "decode")


def odd_characters_in_the_uri(h: Harness) -> Attack:
    fields = body_fields(h.good.entity, h.slot + " ;rm", [request_po("odd")], proof=h.good.proof)
    return Attack(hand_frame(h.good.entity, codec.pack(fields)), "invalid_uri")


def unknown_version(h: Harness) -> Attack:
    fields = body_fields(h.good.entity, h.slot, [request_po("v2")], proof=h.good.proof, version=2)
    return Attack(hand_frame(h.good.entity, codec.pack(fields)), "decode")


def unknown_po_number(h: Harness) -> Attack:
    po = ["3.0.0.0", codec.pack({"id": "po", "body": 1})]
    fields = body_fields(h.good.entity, h.slot, [po], proof=h.good.proof)
    return Attack(hand_frame(h.good.entity, codec.pack(fields)), "decode")


def oversized_frame(h: Harness) -> Attack:
    frame = h.request_frame(h.good, "big", pos=[request_po("big", b"\x00" * MAX_FRAME)])
    return Attack(frame, "frame_too_large")


ATTACKS: list[Callable[[Harness], Attack]] = [
    forged_signature,
    chain_not_rooted_at_the_namespace,
    expired_grant,
    ttl_exceeded,
    missing_permission,
    out_of_scope_uri,
    replayed_frame,
    skewed_timestamp,
    future_timestamp,
    signed_for_another_topic,
    garbage_bytes,
    truncated_msgpack,
    bad_utf8_in_the_uri,
    odd_characters_in_the_uri,
    unknown_version,
    unknown_po_number,
    oversized_frame,
]


async def launch(h: Harness, attack: Attack) -> None:
    if attack.before is not None:
        await h.send(attack.before)
        original_id = envelopes.parse(attack.before).pos[0].value()["id"]
        replies = await h.replies_until(original_id)
        assert [r["ok"] for r in replies if r["id"] == original_id] == [True]
    await h.send(attack.frame)


def secret_forms(seed: bytes) -> list[bytes]:
    return [
        seed,
        seed.hex().encode(),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
        base64.b64encode(seed).rstrip(b"="),
    ]


def assert_no_secret_seed(records: list[logging.LogRecord], replies: list[Message]) -> None:
    texts = [record.getMessage().encode() for record in records]
    texts += [(record.exc_text or "").encode() for record in records]
    texts += [po.data for message in replies for po in message.pos]
    texts += [repr(message.value(PO_REPLY)).encode() for message in replies]
    assert SEEDS, "the helpers made no entities?"
    for seed in SEEDS.values():
        for form in secret_forms(seed):
            assert not any(form in text for text in texts)


def rejection_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bus.verifier"]


# -- one attack at a time: its own error, its own log line, a reply only to authentic senders ----


@pytest.mark.parametrize("make_attack", ATTACKS, ids=lambda f: f.__name__)
async def test_each_attack_is_rejected_with_its_own_error(
    make_attack: Callable[[Harness], Attack], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with attacked_service(memory_url()) as h:
        attack = make_attack(h)
        await launch(h, attack)
        replies = await h.settle("sentinel")
        assert h.server.verifier.rejected == {attack.code: 1}
        result = await h.good_client.request(h.slot, "after")
    assert result == {"echo": "after", "from": h.good.key}
    errors = [r for r in replies if not r["ok"]]
    if attack.reply_to is None:
        assert errors == []
    else:
        [error_reply] = errors
        assert error_reply["uri"] == f"{h.prefix}/signal/reply/{attack.reply_to.key}"
        assert error_reply["id"] == attack.rid
        assert error_reply["error"]["code"] == attack.code
    originals = ["replayed"] if attack.before else []
    assert [r["id"] for r in replies if r["ok"]] == [*originals, "sentinel"]
    [log] = rejection_logs(caplog)
    assert f"({attack.code};" in log
    assert_no_secret_seed(caplog.records, h.seen_replies)


# -- all of them against one service, then a good request ----------------------------------------


async def test_a_service_survives_every_attack(
    bus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with attacked_service(bus_url) as h:
        attacks = [make_attack(h) for make_attack in ATTACKS]
        for attack in attacks:
            await launch(h, attack)
        replies = await h.settle("sentinel")
        rejected = dict(h.server.verifier.rejected)
        result = await h.good_client.request(h.slot, {"zone": "A"})

    assert result == {"echo": {"zone": "A"}, "from": h.good.key}
    expected_codes: dict[str, int] = {}
    for attack in attacks:
        expected_codes[attack.code] = expected_codes.get(attack.code, 0) + 1
    assert rejected == expected_codes

    errors = {r["id"]: (r["uri"], r["error"]["code"]) for r in replies if not r["ok"]}
    assert errors == {
        a.rid: (f"{h.prefix}/signal/reply/{a.reply_to.key}", a.code)
        for a in attacks
        if a.reply_to is not None
    }
    assert [r["id"] for r in replies if r["ok"]] == ["replayed", "sentinel"]  # the original, once

    logs = rejection_logs(caplog)
    for code in rejected:
        assert any(f"({code};" in log for log in logs), f"no log line for {code}"
    assert_no_secret_seed(caplog.records, h.seen_replies)
