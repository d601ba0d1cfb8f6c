"""Dispatch of a slot's requests by their ``op`` to a table of operations.

Each operation declares the body model it takes (:class:`Op`); the slot validates a request's
body against it once, at the door, and calls the operation with the sender's key text and the
validated body. A request may also carry an attachment (a binary PO, :mod:`bus.rpc`): only
operations declared with ``attachment=True`` take one, as a third argument (None when the
request has none); any other answers a request with an attachment ``invalid_request``.

Body models are pydantic models that forbid unknown fields (:class:`Body`), except where the
protocol says an operation ignores its body (``status``). Their field ``op`` is the operation's
name, already matched by the slot. A validation error names the operation and the fields, never
the model's class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bus import Request
from bus.errors import BusError, InvalidRequest

__all__ = ["Answered", "AnyBody", "Body", "Op", "Slot", "parse_body"]

logger = logging.getLogger(__name__)

B = TypeVar("B", bound=BaseModel)


class Body(BaseModel):
    """Base of request bodies: untrusted, so frozen and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: str = ""


class AnyBody(BaseModel):
    """The body of an operation that ignores its body (``status``): anything goes."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    op: str = ""


def parse_body(model: type[B], body: Any, *, op: str) -> B:
    """Validate a request body into ``model``; every failure is an InvalidRequest."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise InvalidRequest(f"bad {op!r} request: {problems}", op=op) from None


Answered = Callable[[str, str, str, float, int], None]
"""``on_answer(slot, op, outcome, seconds, attachment_bytes)``: outcome "ok" or the error code."""


@dataclass(frozen=True, slots=True)
class Op(Generic[B]):
    """One operation: the body model it takes and the coroutine that runs it, called as
    ``run(sender, body)`` or, with ``attachment``, ``run(sender, body, attachment)``."""

    body: type[B]
    run: Callable[..., Awaitable[Any]]
    attachment: bool = False


class Slot:
    """One slot's operations; ``handle`` is the bus Responder's handler."""

    def __init__(
        self,
        name: str,
        operations: Mapping[str, Op[Any]],
        *,
        on_done: Callable[[], None] | None = None,
        on_answer: Answered | None = None,
    ) -> None:
        """``on_done`` runs after each operation that succeeded (the service uses it to
        announce its status soon after a change); ``on_answer`` after every request, with the
        slot, the operation (or "unknown"), the outcome ("ok" or the error code), the seconds
        it took and the attachment's bytes (the service records metrics with it)."""
        self.name = name
        self.operations = dict(operations)
        self.on_done = on_done
        self.on_answer = on_answer

    async def handle(self, request: Request) -> Any:
        if self.on_answer is None:
            return await self._run(request)
        started = time.perf_counter()
        outcome = "internal"
        try:
            result = await self._run(request)
            outcome = "ok"
            return result
        except BusError as error:
            outcome = error.code
            raise
        finally:
            op = request.body.get("op") if isinstance(request.body, dict) else None
            known = op if isinstance(op, str) and op in self.operations else "unknown"
            size = len(request.attachment.data) if request.attachment is not None else 0
            self.on_answer(self.name, known, outcome, time.perf_counter() - started, size)

    async def _run(self, request: Request) -> Any:
        body = request.body
        op = body.get("op") if isinstance(body, dict) else None
        operation = self.operations.get(op) if isinstance(op, str) else None
        if operation is None:
            raise InvalidRequest(
                f"slot {self.name!r} has no operation of that name; it has: "
                + ", ".join(sorted(self.operations)),
                slot=self.name,
            )
        assert isinstance(op, str)
        parsed = parse_body(operation.body, body, op=op)
        logger.debug("%s %s from %s", self.name, op, request.origin_text)
        if operation.attachment:
            result = await operation.run(request.origin_text, parsed, request.attachment)
        elif request.attachment is not None:
            raise InvalidRequest(f"operation {op!r} takes no attachment", slot=self.name)
        else:
            result = await operation.run(request.origin_text, parsed)
        if self.on_done is not None:
            self.on_done()
        return result
