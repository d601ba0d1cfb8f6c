"""Answers awaiting feedback: which release or model answered a query, for whom, and what.

``Pending(limit)`` keeps the last ``limit`` (default 100,000) answered queries of applications
with a policy, the oldest forgotten first; feedback for a forgotten query (or one answered
before the service restarted, or asked by another requester) is ``not_found``. Query ids are
the predict replies' ``query_id``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from bus.errors import NotFound

__all__ = ["DEFAULT_PENDING", "Answered", "Pending"]

DEFAULT_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class Answered:
    app: str
    requester: str
    kind: Literal["contract", "selection"]
    choice: str
    """The release version (contract) or the model (selection) that answered."""
    output: Any
    user_id: str = ""
    probability: float = 1.0
    candidates: int = 1


class Pending:
    def __init__(self, limit: int = DEFAULT_PENDING) -> None:
        self.limit = limit
        self._answers: OrderedDict[int, Answered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def add(self, query_id: int, answered: Answered) -> None:
        self._answers[query_id] = answered
        while len(self._answers) > self.limit:
            self._answers.popitem(last=False)

    def take(self, query_id: int, app: str, requester: str) -> Answered:
        """The answer, once: a second feedback for the same query is ``not_found``."""
        found = self._answers.get(query_id)
        if found is None or found.app != app or found.requester != requester:
            raise NotFound(
                f"no answer of {app!r} awaits feedback under query id {query_id} from you "
                "(unknown, already given feedback, forgotten, or answered before a restart)",
                app=app,
                query_id=query_id,
            )
        del self._answers[query_id]
        return found
