"""bus/PROTOCOL.md cannot drift from the code: its test vectors, error codes and PO numbers, the
service's operations (with their body fields and worked examples) and the replica protocol's
messages are checked here against the reference implementation."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
from pydantic import BaseModel

import bus
from bus import codec, errors, grants, po, replycache, responder, rpc, transfer
from bus import envelope as envelopes
from bus import uri as uris
from bus.entity import Entity, key_to_text, verify
from bus.grants import Grant, check_chain, decode_chain, encode_chain
from bus.liveness import heartbeat
from bus.po import PayloadObject
from bus.verdicts import VerdictCache
from bus.verifier import Verifier
from proxy.backend import channel, images
from proxy.backend import docker as runtime_docker
from proxy.backend import embedded as backend
from proxy.backend import verdicts as forecast_verdicts
from proxy.registry import records
from proxy.service import quotas, settings, slots
from proxy.service import versions as routing
from proxy.service.forecast import access as forecast_access
from proxy.service.forecast import caches as forecast_caches
from proxy.service.forecast import metadata as forecast_metadata
from proxy.service.forecast import ops as forecast
from proxy.service.operations import (
    admin,
    containers,
    deploy,
    fit,
    predict,
    routes,
    schedules,
)
from proxy.service.startup import service_uris
from proxy.uploads import requests as upload_requests
from proxy.uploads import sessions as uploads

DOC = Path(bus.__file__).with_name("PROTOCOL.md")
_VECTOR = re.compile(r"^```vector ([a-z0-9-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_EXAMPLE = re.compile(r"^```json ([a-z0-9-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _vectors() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, text in _VECTOR.findall(DOC.read_text()):
        assert name not in found, f"vector {name!r} appears twice in PROTOCOL.md"
        found[name] = text
    return found


VECTORS = _vectors()


def hex_vector(name: str) -> bytes:
    return bytes.fromhex("".join(VECTORS[name].split()))


def inputs(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VECTORS[name].splitlines() if line.strip())
    return {key.strip(): value.strip() for key, value in pairs}


def entity(role: str) -> Entity:
    return Entity(hex_vector(f"{role}-seed"))


def root_grant() -> Grant:
    spec = inputs("grant-inputs")
    return Grant.create(
        entity(spec["giver"]),
        entity(spec["receiver"]).public_key,
        spec["pattern"],
        spec["permissions"],
        ttl=int(spec["ttl"]),
        expires_ns=int(spec["expires_ns"]),
        created_ns=int(spec["created_ns"]),
    )


def sealed_frame() -> bytes:
    spec = inputs("envelope-inputs")
    assert spec["proof"] == "grant" and spec["persist"] in ("true", "false")
    return envelopes.seal(
        entity(spec["signer"]),
        spec["uri"],
        [PayloadObject.text(spec["po_text"], spec["po_number"])],
        persist=spec["persist"] == "true",
        proof=(root_grant().encode(),),
        ts_ns=int(spec["ts_ns"]),
        nonce=bytes.fromhex(spec["nonce"]),
    )


def test_the_doc_has_every_vector() -> None:
    expected = {
        "namespace-seed",
        "namespace-public-key",
        "namespace-key-text",
        "publisher-seed",
        "publisher-key-text",
        "envelope-context",
        "grant-context",
        "grant-inputs",
        "grant-body",
        "grant-signature",
        "grant",
        "chain-file",
        "envelope-inputs",
        "envelope-body",
        "envelope-signature",
        "frame",
        "request-po-data",
        "reply-ok-po-data",
        "reply-error-po-data",
        "predict-request-po-data",
        "replica-batch",
    }
    assert expected <= set(VECTORS)


def test_keys_from_seeds() -> None:
    namespace = entity("namespace")
    assert namespace.public_key == hex_vector("namespace-public-key")
    assert namespace.key_text == VECTORS["namespace-key-text"].strip()
    assert len(namespace.key_text) == 43
    assert entity("publisher").key_text == VECTORS["publisher-key-text"].strip()


def test_signing_contexts() -> None:
    assert hex_vector("envelope-context") == b"modelbus envelope v1\x00"
    assert hex_vector("grant-context") == b"modelbus grant v1\x00"
    # The code signs exactly context || body: the signature verifies over the documented bytes.
    grant = root_grant()
    verify(grant.giver, hex_vector("grant-context") + grant.body, grant.signature)


def test_grant_bytes() -> None:
    grant = root_grant()
    assert grant.body == hex_vector("grant-body")
    assert grant.signature == hex_vector("grant-signature")
    assert grant.encode() == hex_vector("grant")
    assert encode_chain([grant]) == hex_vector("chain-file")
    assert decode_chain(hex_vector("chain-file")) == (grant,)


def test_grant_chain_verdict() -> None:
    spec = inputs("grant-inputs")
    verdict = check_chain((Grant.decode(hex_vector("grant")),), now_ns=int(spec["created_ns"]))
    assert verdict.receiver == entity("publisher").public_key
    assert str(verdict.permissions) == spec["permissions"]
    assert verdict.patterns == (spec["pattern"],)


def test_envelope_bytes() -> None:
    frame = sealed_frame()
    assert frame == hex_vector("frame")
    envelope = envelopes.decode(frame)
    assert envelope.body == hex_vector("envelope-body")
    assert envelope.signature == hex_vector("envelope-signature")
    assert codec.pack([envelope.body, envelope.signature]) == frame
    verify(envelope.origin, hex_vector("envelope-context") + envelope.body, envelope.signature)


def test_the_frame_vector_decodes_and_verifies() -> None:
    spec = inputs("envelope-inputs")
    ts_ns = int(spec["ts_ns"])
    verifier = Verifier(clock_ns=lambda: ts_ns + 1_000_000_000)
    envelope = verifier.check_frame(hex_vector("frame"))
    assert envelope.uri == spec["uri"]
    assert envelope.ts_ns == ts_ns
    assert envelope.nonce == bytes.fromhex(spec["nonce"])
    assert envelope.persist is (spec["persist"] == "true")
    assert key_to_text(envelope.origin) == VECTORS["publisher-key-text"].strip()
    assert envelope.pos == (PayloadObject(spec["po_number"], spec["po_text"].encode()),)
    assert envelope.proof == (hex_vector("grant"),)


def test_a_changed_frame_byte_breaks_the_signature() -> None:
    frame = bytearray(hex_vector("frame"))
    frame[frame.index(b"hello, bus")] ^= 0x01
    with pytest.raises(errors.BadSignature):
        envelopes.decode(bytes(frame))


def test_request_and_reply_payloads() -> None:
    assert codec.pack({"id": "r1", "body": {"x": 1}}) == hex_vector("request-po-data")
    assert codec.pack({"id": "r1", "ok": True, "result": {"x": 1}}) == hex_vector(
        "reply-ok-po-data"
    )
    busy = errors.Overloaded("busy", limit=64)
    assert codec.pack({"id": "r1", "ok": False, "error": busy.to_wire()}) == hex_vector(
        "reply-error-po-data"
    )


def _error_classes(cls: type[errors.BusError]) -> list[type[errors.BusError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_error_classes(sub))
    return found


def _cells(line: str) -> list[str]:
    """A table row's cells; ``\\|`` inside a cell is not a separator."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _table_rows() -> list[list[str]]:
    return [_cells(line) for line in DOC.read_text().splitlines() if line.startswith("|")]


def _tables() -> list[tuple[list[str], list[list[str]]]]:
    """Every table of the doc: its header cells and its body rows."""
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = DOC.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|") and (index == 0 or not lines[index - 1].startswith("|")):
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            found.append((_cells(line), rows))
    return found


def _flat_doc() -> str:
    """The doc with every run of whitespace made one space, for phrases that wrap."""
    return " ".join(DOC.read_text().split())


def test_every_error_code_is_in_the_table() -> None:
    rows = {(row[0], row[1]) for row in _table_rows() if len(row) >= 2}
    for cls in _error_classes(errors.BusError):
        assert (f"`{cls.code}`", f"`{cls.__name__}`") in rows, f"{cls.code} is undocumented"


def test_every_po_constant_is_documented() -> None:
    rows = {(row[0], row[1]) for row in _table_rows() if len(row) >= 2}
    constants = {name: getattr(po, name) for name in po.__all__ if name.startswith("PO_")}
    assert constants, "bus/po.py defines no PO_ constants?"
    for name, number in constants.items():
        assert (f"`{name}`", f"`{number}`") in rows, f"{name} = {number} is undocumented"


def test_documented_limits_match_the_code() -> None:
    text = DOC.read_text()
    assert envelopes.DEFAULT_MAX_FRAME == 16 * 1024 * 1024 and "16 MiB" in text
    assert f"at most **{envelopes.MAX_POS}** payload objects" in text
    assert f"at most **{grants.MAX_CHAIN}**" in text
    assert f"**{uris.MAX_URI_LENGTH} characters**" in text
    assert f"**{uris.MAX_SEGMENTS} segments**" in text
    assert f"1 … {rpc.MAX_ID_LENGTH} characters" in text
    assert envelopes.DETACH_OVER == 65_536 and "64 KiB (65,536 bytes)" in text
    assert f"nest at most **{codec.MAX_DEPTH} levels** deep" in _flat_doc()
    assert f"{codec.MAX_DEPTH} levels of arrays and maps" in text


def test_documented_cache_bounds_match_the_code() -> None:
    flat = _flat_doc()
    cache = VerdictCache()
    assert cache.failure_ttl_ns == 30 * 10**9 and "for **30 s**, at most **1024**" in flat
    assert cache.failure_size == 1024 and cache.size == 1024
    assert cache.grant_size == 1024 and "the last **1024** distinct grants" in flat
    verifier = Verifier()
    assert verifier.replay_capacity == 1_000_000 and "at most 1,000,000 entries" in flat
    assert verifier.skew_ns == 30 * 10**9


def test_documented_reply_limits_and_retries_match_the_code() -> None:
    text = _flat_doc()
    cache = replycache.ReplyCache()
    assert (cache.max_entries, cache.max_bytes, cache.max_sender_bytes) == (
        4096,
        64 * 1024**2,
        16 * 1024**2,
    )
    assert "4096 latest, at most 64 MiB packed in all and 16 MiB per requester" in text
    assert "4096 latest replies, at most 64 MiB of packed replies in all and 16 MiB per" in text
    assert rpc.MAX_REPLY_BYTES == 16_711_680 and "64 KiB (16,711,680 bytes)" in text
    assert '"limit": 16711680}' in text
    assert (rpc.RETRY_MIN_S, rpc.RETRY_MAX_S) == (1.0, 5.0) and "(at least 1 s, at most 5 s" in text


# -- the modelbus service (§17) ------------------------------------------------------------------


def _slot_tables() -> dict[str, dict[str, slots.Op[Any]]]:
    """Each slot's operations, composed as ``proxy.service.startup.running_proxy`` composes them
    (the forecast operations of ``proxy.service.forecast.build`` on ``slot/predict``)."""
    anything: Any = SimpleNamespace(begin=None, chunk=None, commit=None, abort=None, clock=None)
    policies = routes.RouteOps(anything, anything, anything)
    return {
        "predict": predict.PredictOps(anything, anything, anything, anything, timeout_s=1.0).table()
        | forecast.ForecastOps(anything, anything, anything).table()
        | policies.predict_table(),
        "admin": admin.AdminOps(anything, anything, anything, dict).table()
        | policies.admin_table()
        | schedules.ScheduleOps(anything, SimpleNamespace(verifier=None), anything).table(),
        "deploy": deploy.DeployOps(anything, anything, anything, anything).table()
        | containers.ContainerOps(None).table()
        | fit.FitOps(anything, anything, anything, anything).table(),
    }


# The body model each operation declares (the slot validates the request with it).
BODIES: dict[str, type[BaseModel]] = {
    "predict": predict.PredictBody,
    "forecast": forecast.ForecastBody,
    "forecast.models": forecast.ModelsBody,
    "app.register": admin.AppBody,
    "app.delete": admin.NameBody,
    "app.list": admin.ListBody,
    "app.info": admin.NameBody,
    "app.link": admin.LinkBody,
    "app.unlink": admin.LinkBody,
    "app.linked": admin.NameBody,
    "model.list": admin.ListBody,
    "model.info": admin.VersionBody,
    "model.current": admin.NameBody,
    "model.set_version": admin.SetVersionBody,
    "model.rollback": admin.NameBody,
    "model.replicas": admin.ReplicasBody,
    "model.replicas.set": admin.ReplicasBody,
    "model.stop": admin.StopBody,
    "model.stop_inactive": admin.StopBody,
    "model.stop_all": slots.Body,
    "model.logs": admin.LogsBody,
    "model.wait_ready": admin.WaitBody,
    "status": slots.AnyBody,
    "upload.begin": upload_requests.BeginRequest,
    "upload.chunk": upload_requests.ChunkRequest,
    "upload.commit": upload_requests.UploadRef,
    "upload.abort": upload_requests.UploadRef,
    "model.deploy": deploy.DeployBody,
    "container.list": containers.ListBody,
    "container.run": containers.RunBody,
    "route.set": routes.ContractBody,
    "route.show": routes.AppBody,
    "route.delete": routes.AppBody,
    "route.feed_metric": routes.MetricBody,
    "route.expire": routes.ReleaseBody,
    "route.restore": routes.ReleaseBody,
    "route.log": routes.LogBody,
    "policy.set": routes.SelectionBody,
    "policy.show": routes.PolicyShowBody,
    "policy.delete": routes.AppBody,
    "feedback": routes.FeedbackBody,
    "fit.start": fit.FitStartBody,
    "fit.status": fit.JobBody,
    "fit.list": fit.FitListBody,
    "fit.resume": fit.JobBody,
    "schedule.add": schedules.ScheduleAddBody,
    "schedule.list": slots.Body,
    "schedule.runs": schedules.RunsBody,
    "schedule.pause": schedules.ScheduleNameBody,
    "schedule.resume": schedules.ScheduleNameBody,
    "schedule.remove": schedules.ScheduleNameBody,
    "schedule.rerun": schedules.RerunBody,
}


def _documented_ops() -> dict[str, dict[str, list[str]]]:
    """slot → op → its row, from the tables headed "op on `slot/<name>`"."""
    found: dict[str, dict[str, list[str]]] = {}
    for header, rows in _tables():
        match = re.fullmatch(r"op on `slot/([a-z]+)`", header[0])
        if match is None:
            continue
        assert header[1:] == ["body fields (besides `op`)", "reply", "errors"], header
        slot = found.setdefault(match.group(1), {})
        for row in rows:
            op = row[0].strip("`")
            assert op not in slot, f"{op} is documented twice on slot/{match.group(1)}"
            slot[op] = row
    return found


def test_every_service_operation_is_documented_on_its_slot() -> None:
    documented = _documented_ops()
    code = _slot_tables()
    assert set(documented) == set(code)
    for slot, operations in code.items():
        assert set(documented[slot]) == set(operations), f"slot/{slot} differs from the doc"
        for op in operations:
            assert f"`{op}`" in DOC.read_text()


def test_every_body_field_is_documented() -> None:
    declared = {
        op: operation.body for ops in _slot_tables().values() for op, operation in ops.items()
    }
    assert declared == BODIES
    for ops in _documented_ops().values():
        for op, row in ops.items():
            for field in BODIES[op].model_fields:
                if field != "op":
                    assert f"`{field}`" in row[1], f"{op}: field {field!r} is undocumented"


class _Router:
    """The two application and version lookups the predict operation makes."""

    def __init__(self, app: records.Application) -> None:
        self.app = app

    async def application(self, name: str) -> records.Application:
        if name != self.app.name:
            raise errors.NotFound(f"no application named {name!r}", app=name)
        return self.app

    async def version_for(self, name: str, version: str | None) -> str:
        return version or "2"

    async def input_type(self, name: str, version: str) -> records.InputType:
        return "doubles"


class _Backend:
    """Answers ``sum(x)`` per input until ``late`` is set, then misses the SLO."""

    late = False

    async def predict(
        self, name: str, version: str, inputs: list[Any], timeout_s: float
    ) -> list[Any]:
        if self.late:
            raise errors.RequestTimeout(
                f"no prediction from {name}:{version} within {timeout_s} s ({len(inputs)} queued)",
                model=name,
                version=version,
            )
        return [sum(x) for x in inputs]


def _examples() -> dict[str, Any]:
    return {name: json.loads(text) for name, text in _EXAMPLE.findall(DOC.read_text())}


async def test_the_worked_predict_examples() -> None:
    examples = _examples()
    zone_a = records.Application(
        name="zone-a",
        input_type="doubles",
        default_output="nan",
        latency_slo_micros=100_000,
        description="",
        created_ns=0,
        linked_model="thermal",
    )
    no_registry: Any = None
    router: Any = _Router(zone_a)
    service_backend: Any = _Backend()
    counters: Any = SimpleNamespace(served_default=0)
    ops = predict.PredictOps(no_registry, service_backend, router, counters, timeout_s=30.0)
    for name in ("predict", "predict-batch", "predict-error"):
        request = examples[f"{name}-request"]
        service_backend.late = name == "predict-batch"
        try:
            reply = {
                "id": request["id"],
                "ok": True,
                "result": await ops.predict(
                    "k", predict.PredictBody.model_validate(request["body"])
                ),
            }
        except errors.BusError as error:
            reply = {"id": request["id"], "ok": False, "error": error.to_wire()}
        assert reply == examples[f"{name}-reply"], name
    assert codec.pack(examples["predict-request"]) == hex_vector("predict-request-po-data")


async def test_an_unknown_op_is_an_invalid_request_naming_the_slot() -> None:
    slot = slots.Slot("predict", _slot_tables()["predict"])
    request = rpc.Request("ns/x/slot/predict", bytes(32), "r1", {"op": "predict.nothing"})
    with pytest.raises(errors.InvalidRequest, match="has no operation") as caught:
        await slot.handle(request)
    assert caught.value.details == {"slot": "predict"}


def test_documented_service_constants_match_the_code() -> None:
    text = _flat_doc()
    defaults = settings.ProxySettings()
    assert settings.DEFAULT_SERVICE_PATH == "s.modelbus/_" and "s.modelbus/_" in text
    assert service_uris("ns", "s.x/_") == ("ns/s.x/_", "ns/s.x/_/i.modelbus")
    assert defaults.max_concurrency == 64 and "(64 by default)" in text
    assert defaults.drain_timeout_s == 10 and "(10 s in the reference service)" in text
    assert defaults.predict_timeout_s == 30 and "(30 s by default, a service setting)" in text
    assert defaults.heartbeat_interval_s == heartbeat.DEFAULT_INTERVAL_S == 10
    assert heartbeat.STALE_AFTER_S == 30 and "lastalive.ts > 30 s" in text
    assert "the service is shutting down; retry shortly" in inspect.getsource(responder.Responder)
    assert "the service is shutting down; retry shortly" in text
    assert predict.MAX_BATCH == 10_000 and "a batch of at most 10,000 inputs" in text
    limits = uploads.UploadLimits()
    assert limits.max_bytes == 8 * 1024**3 and "at most 8 GiB" in text
    assert limits.max_chunk_bytes == 8 * 1024**2 and "`chunk_size` at most 8 MiB" in text
    assert limits.max_open_per_sender == 4 and "at most 4 open uploads per sender" in text
    assert limits.window == 16 and "`window` is 16" in text
    assert limits.idle_timeout_s == 3600 and "has not advanced for 1 h" in text
    assert transfer.DEFAULT_CHUNK_BYTES == 1024**2 and transfer.DEFAULT_WINDOW == 16
    assert containers.MAX_LABELS == 64 and containers.MAX_ENV == 256
    assert "(at most 256, values up to 32,768 characters)" in text
    assert f"`{containers.REQUESTER_LABEL}`" in text
    assert records.ADAPTIVE_BATCH_SIZE == -1 and routing.DEFAULT_BATCH_SIZE == 64
    assert "or **64** for `-1`" in text
    # The quotas of §17.7 (issue 12 item 9).
    table = text[text.index("### 17.7 Quotas") :]
    assert defaults.max_in_flight_per_sender == 16 and "| 16 (*setting* `max_in_flight" in table
    assert defaults.max_inputs_per_sender == 2500 and "| 2,500 (*setting* `max_inputs" in table
    assert defaults.max_replicas_total == 64 and "| 64 (*setting* `max_replicas_total`)" in table
    assert defaults.max_waiting_ready == 8 and "| 8 (*setting* `max_waiting_ready`)" in table
    assert defaults.max_applications == 1000 and "| 1,000 (*setting* `max_applications`)" in table
    assert backend.BackendSettings().max_replicas_total == defaults.max_replicas_total
    assert quotas.MAX_TEXT_CHARS == 4096 and "| 4096 characters each |" in table
    assert quotas.MAX_METADATA_BYTES == 64 * 1024 and "| 64 KiB packed |" in table
    assert admin.MAX_WAIT_READY_S == 300 and "`timeout_s` ≤ 300" in table


# -- the replica protocol (§18) ------------------------------------------------------------------


def _message_classes() -> dict[tuple[str, str], type[BaseModel]]:
    found = {}
    for sender, union in (("worker", channel.WorkerMessage), ("backend", channel.BackendMessage)):
        for cls in get_args(get_args(union)[0]):
            found[(cls.model_fields["type"].default, sender)] = cls
    return found


def test_every_replica_message_is_documented() -> None:
    tables = [rows for header, rows in _tables() if header[:2] == ["message", "from"]]
    assert len(tables) == 1
    documented = {(row[0].strip("`"), row[1]): row for row in tables[0]}
    classes = _message_classes()
    assert set(documented) == set(classes)
    for key, cls in classes.items():
        fields = [name for name in cls.model_fields if name != "type"]
        for field in fields:
            assert f"`{field}`" in documented[key][2], f"{key}: field {field!r} is undocumented"
        if not fields:
            assert documented[key][2] == "—", key


def test_the_replica_examples_are_valid_messages() -> None:
    examples = _examples()
    decoders = {"replica-batch": channel.decode_backend_message}
    names = [name for name in examples if name.startswith("replica-")]
    assert set(names) == {
        "replica-hello",
        "replica-batch",
        "replica-result",
        "replica-error-result",
    }
    for name in names:
        data = codec.pack(examples[name])
        message = decoders.get(name, channel.decode_worker_message)(data)
        assert channel.encode(message) == data, name
    assert codec.pack(examples["replica-batch"]) == hex_vector("replica-batch")


def test_documented_replica_constants_match_the_code() -> None:
    text = _flat_doc()
    defaults = backend.BackendSettings()
    assert channel.PROTOCOL == 1 and "The protocol version is **1**" in text
    assert channel.MAX_MESSAGE_BYTES == 64 * 1024**2 and "at most **64 MiB**" in text
    assert f"**`{channel.TOKEN_ENV}`**" in text
    assert channel.EXIT_LOAD_FAILED == 2 and "exits with status **2**" in text
    assert channel.EXIT_BACKEND_LOST == 3 and "exits with status **3**" in text
    assert defaults.host == "127.0.0.1" and "`tcp://127.0.0.1:<a free port>`" in text
    assert defaults.heartbeat_s == 1 and "every 1 s to every ready worker" in text
    assert defaults.silence_limit_s == 10 and "for more than **10 s**" in text
    assert defaults.queue_limit == 10_000 and "at most **10,000**" in text
    assert defaults.max_batch_bytes == 32 * 1024**2 and "**32 MiB** of packed inputs" in text
    assert defaults.max_input_bytes == 16 * 1024**2 and "over 16 MiB packed" in text
    assert defaults.max_replicas == 64 and "`replicas`: int 0 … 64" in text
    assert defaults.max_batch_size == 10_000 and "1 … 10,000, or `-1`" in text
    assert (defaults.stop_grace_s, defaults.kill_grace_s) == (5, 2)
    assert "waits 5 s for it to exit" in text and "kills it 2 s later" in text
    assert (defaults.restart_min_s, defaults.restart_max_s) == (0.2, 10)
    assert "back off from 0.2 s, doubling to at most 10 s" in text
    assert f"`{images.ENTRY_LABEL}`" in text
    assert f"`closure:{images.MODEL_CLOSURE_PATH}`" in text
    assert f"`{' '.join(images.WORKER_COMMAND)}`" in text
    for label in (
        runtime_docker.MODEL_LABEL,
        runtime_docker.VERSION_LABEL,
        runtime_docker.REPLICA_LABEL,
        runtime_docker.OWNER_LABEL,
    ):
        assert f"`{label}`" in text


def test_documented_forecast_constants_match_the_code() -> None:
    text = _flat_doc()
    defaults = settings.ProxySettings()
    assert defaults.forecast_call_timeout_s == 10 and "timeout (10 s, a service setting)" in text
    assert defaults.forecast_deadline_s == 20 and "deadline (20 s, a service setting)" in text
    assert defaults.can_predict_timeout_s == 2 and "a timeout after 2 s (a service setting)" in text
    cache = forecast_caches.ResultCache()
    assert (cache.max_entries, cache.max_bytes) == (10_000, 64 * 1024**2)
    assert "at most 10,000 answers and about\n64 MiB" in DOC.read_text()
    assert forecast_access.MAX_PROOFS == 16 and "`proofs` is a list (at most 16)" in text
    assert forecast_access.MAX_PROOF_BYTES == 32 * 1024 and "at most 32 KiB each" in text
    assert forecast_metadata.MAX_FIELD_ERRORS == 20 and "(at most 20)" in text
    assert forecast.MAX_WINDOW_DAYS == 731 and "at most 731 days apart" in text
    assert forecast.MAX_PROBLEMS == 100 and "the first 100 by time" in text
    assert forecast_verdicts.QUESTION_KEY == "modelbus.can_predict"
    assert '{"modelbus.can_predict": {"start_ns": int' in DOC.read_text()
