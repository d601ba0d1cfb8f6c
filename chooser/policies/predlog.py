"""The prediction log's record: what was asked, who answered, what came back — keyed for joins.

A record (``LogRecord.to_data()``), one per served answer and one per shadow answer::

    {"key": "A.2018-01-30",     # the configured key fields' values joined by the separator
     "query_id": "q-17",        # the request id: feedback and actuals may name it
     "app": "thermal",  "version": "2",  "kind": "served",   # or "shadow"
     "ts_ns": 1517300000000000000,   "user_id": "",
     "input": {...}, "output": 21.5, "error": null, "latency_ms": 0.8,
     "served_version": null,    # shadow only: the release whose answer was returned
     "difference": null}        # shadow only: ``chooser.policies.reward.difference``

``log_key(spec, fields)``: each key field's value (a string or number; anything else or a
missing field is the empty string) joined by ``spec.separator`` — ForestFlow's key features.
``should_log(spec, rng)``: ``none`` never, ``full`` always, ``sample`` with ``spec.sample``.
``key_segment(key)`` is the key as a bus URI segment (the log is persisted per key): the key
itself when it is one, else ``k-`` and 24 hex digits of its BLAKE2b. ``join_actuals`` pairs
records with actual values by key (or query id) — the join an evaluation needs.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from chooser.policies.spec import LogSpec

__all__ = ["LogRecord", "join_actuals", "key_segment", "log_key", "should_log"]

_SEGMENT = re.compile(r"[A-Za-z0-9\-_.,()$]{1,64}")


@dataclass(frozen=True, slots=True)
class LogRecord:
    key: str
    query_id: str
    app: str
    version: str
    kind: Literal["served", "shadow"]
    ts_ns: int
    user_id: str
    input: Any
    output: Any
    error: str | None
    latency_ms: float
    served_version: str | None = None
    difference: float | None = None

    def to_data(self) -> dict[str, Any]:
        return asdict(self)


def _part(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return ""


def log_key(spec: LogSpec, fields: Mapping[str, Any]) -> str:
    return spec.separator.join(_part(fields.get(name)) for name in spec.key_fields)


def should_log(spec: LogSpec, rng: random.Random) -> bool:
    if spec.level == "full":
        return True
    return spec.level == "sample" and rng.random() < spec.sample


def key_segment(key: str) -> str:
    if _SEGMENT.fullmatch(key):
        return key
    return "k-" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def join_actuals(
    records: Iterable[Mapping[str, Any]], actuals: Mapping[str, Any], by: str = "key"
) -> list[tuple[Mapping[str, Any], Any]]:
    """Each record whose ``by`` field (``key`` or ``query_id``) has an actual, with it."""
    return [(record, actuals[record[by]]) for record in records if record.get(by) in actuals]
