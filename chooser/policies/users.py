"""Per-user selection state, bounded: at most ``limit`` users, the least recently used evicted.

``UserStates(limit)`` maps a user id (``""`` for requests without one) and a candidate set
(its models, sorted and joined by ``|``) to the policy's ``Arms``. Choosing or learning for a
user makes it the most recent; adding a user beyond ``limit`` (default ``DEFAULT_USER_LIMIT``,
10,000 per application) evicts the least recently used one, which starts again from the prior
if it comes back; ``evicted`` counts evictions. A flood of distinct user ids therefore costs
at most ``limit`` entries. ``to_data``/``from_data`` convert to plain data (from least to most
recent, so the order survives); ``from_data`` validates stored data and raises only
``PolicyError``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from chooser.policies.bandits import Arms
from chooser.policies.spec import PolicyError

__all__ = ["DEFAULT_USER_LIMIT", "MAX_USER_ID", "UserStates", "candidate_key"]

DEFAULT_USER_LIMIT = 10_000
MAX_USER_ID = 128
MAX_ARMS = 64
MAX_STATS = 4


def candidate_key(candidates: Sequence[str]) -> str:
    return "|".join(sorted(candidates))


class UserStates:
    def __init__(self, limit: int = DEFAULT_USER_LIMIT) -> None:
        if limit < 1:
            raise PolicyError([("limit", "at least one user")])
        self.limit = limit
        self.evicted = 0
        self._users: OrderedDict[str, dict[str, Arms]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._users)

    def arms(self, user: str, candidates: Sequence[str]) -> Arms:
        """The user's state for this candidate set, created (and the oldest evicted) if new."""
        if len(user) > MAX_USER_ID:
            raise PolicyError([("user_id", f"at most {MAX_USER_ID} characters")])
        sets = self._users.get(user)
        if sets is None:
            sets = self._users[user] = {}
            while len(self._users) > self.limit:
                self._users.popitem(last=False)
                self.evicted += 1
        else:
            self._users.move_to_end(user)
        return sets.setdefault(candidate_key(candidates), {})

    def peek(self, user: str) -> dict[str, Arms] | None:
        """The user's state without touching its recency (for ``policy show``)."""
        return self._users.get(user)

    def to_data(self) -> dict[str, Any]:
        return {"limit": self.limit, "evicted": self.evicted, "users": list(self._users.items())}

    @classmethod
    def from_data(cls, data: Any, limit: int | None = None) -> UserStates:
        try:
            stored_limit, evicted, users = data["limit"], data["evicted"], data["users"]
            states = cls(limit or _count(stored_limit))
            states.evicted = _count(evicted)
            for user, sets in users:
                states._users[_text(user, MAX_USER_ID)] = _sets(sets)
                if len(states._users) > states.limit:
                    states._users.popitem(last=False)
                    states.evicted += 1
            return states
        except PolicyError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PolicyError([("state", "malformed selection state")]) from None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12:
        raise PolicyError([("state", "a count must be a non-negative integer")])
    return value


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise PolicyError([("state", "a name must be a short string")])
    return value


def _sets(value: Any) -> dict[str, Arms]:
    if not isinstance(value, dict) or len(value) > MAX_ARMS:
        raise PolicyError([("state", "malformed candidate sets")])
    out: dict[str, Arms] = {}
    for key, arms in value.items():
        if not isinstance(arms, dict) or len(arms) > MAX_ARMS:
            raise PolicyError([("state", "malformed arms")])
        out[_text(key, 64 * 65)] = {
            _text(model, 64): _stats(stats) for model, stats in arms.items()
        }
    return out


def _stats(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > MAX_STATS:
        raise PolicyError([("state", "malformed statistics")])
    out = {}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise PolicyError([("state", "a statistic must be a number")])
        if not math.isfinite(number):
            raise PolicyError([("state", "a statistic must be finite")])
        out[_text(name, 8)] = float(number)
    return out
