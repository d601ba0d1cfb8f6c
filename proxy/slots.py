"""Dispatch of a slot's requests by their ``op`` to a table of operations.

An operation is called with the sender's key text and the request body. A request may also carry
an attachment (a binary PO, :mod:`bus.rpc`): only operations wrapped in :class:`WithAttachment`
take one, as a third argument (None when the request has none); any other answers a request
with an attachment ``invalid_request``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bus import PayloadObject, Request
from bus.errors import BusError, InvalidRequest

__all__ = ["Body", "Operation", "Slot", "WithAttachment", "parse_body"]

B = TypeVar("B", bound=BaseModel)


class Body(BaseModel):
    """Base of request bodies: untrusted, so frozen and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: str


def parse_body(model: type[B], body: Any) -> B:
    """Validate a request body into ``model``; every failure is an InvalidRequest."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise InvalidRequest(f"bad {model.__name__} request: {problems}") from None


logger = logging.getLogger(__name__)

Operation = Callable[[str, dict[str, Any]], Awaitable[Any]]
Answered = Callable[[str, str, str, float, int], None]


@dataclass(frozen=True, slots=True)
class WithAttachment:
    """An operation that takes the request's attachment: ``run(sender, body, attachment)``."""

    run: Callable[[str, dict[str, Any], PayloadObject | None], Awaitable[Any]]

    async def __call__(self, sender: str, body: dict[str, Any]) -> Any:
        return await self.run(sender, body, None)


class Slot:
    """One slot's operations; ``handle`` is the bus Responder's handler."""

    def __init__(
        self,
        name: str,
        operations: Mapping[str, Operation],
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
                f"slot {self.name!r} has no operation {op!r}; it has: "
                + ", ".join(sorted(self.operations)),
                slot=self.name,
            )
        assert isinstance(body, dict)
        logger.debug("%s %s from %s", self.name, op, request.origin_text)
        if isinstance(operation, WithAttachment):
            result = await operation.run(request.origin_text, body, request.attachment)
        elif request.attachment is not None:
            raise InvalidRequest(f"operation {op!r} takes no attachment", slot=self.name)
        else:
            result = await operation(request.origin_text, body)
        if self.on_done is not None:
            self.on_done()
        return result
