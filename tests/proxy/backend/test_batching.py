"""The batch queue on its own: adaptive batches, limits, retries after crashes."""

from __future__ import annotations

import pytest

from bus.errors import InternalError, NotFound, Overloaded
from proxy.backend.batching import BatchQueue


def queue(batch_size: int = 4, limit: int = 10, max_batch_bytes: int = 1_000) -> BatchQueue:
    return BatchQueue(
        "thermal:1", batch_size=batch_size, limit=limit, max_batch_bytes=max_batch_bytes
    )


def test_take_cuts_what_is_queued_now_in_order() -> None:
    q = queue(batch_size=4)
    first = q.submit(["a", "b", "c"], [1, 1, 1])
    second = q.submit(["d", "e"], [1, 1])
    batch = q.take(1)
    assert batch is not None and batch.inputs == ["a", "b", "c", "d"]
    rest = q.take(2)
    assert rest is not None and rest.inputs == ["e"]
    assert q.take(3) is None
    assert dict(q.batch_sizes) == {4: 1, 1: 1}
    q.complete(rest, ["E"])
    assert not second.done.is_set()
    q.complete(batch, ["A", "B", "C", "D"])
    assert first.done.is_set() and second.done.is_set()
    assert (first.outputs, second.outputs) == (["A", "B", "C"], ["D", "E"])
    assert q.predictions == 5


def test_a_batch_stops_at_the_byte_budget_but_never_empty() -> None:
    q = queue(max_batch_bytes=100)
    q.submit(["big", "small", "huge"], [60, 30, 500])
    sizes = []
    while (batch := q.take(len(sizes))) is not None:
        sizes.append(batch.inputs)
    assert sizes == [["big", "small"], ["huge"]]


def test_the_limit_refuses_whole_requests() -> None:
    q = queue(limit=3)
    q.submit([1, 2], [1, 1])
    with pytest.raises(Overloaded, match="2 inputs queued"):
        q.submit([3, 4], [1, 1])
    assert len(q) == 2


def test_withdraw_and_failed_requests_leave_the_queue() -> None:
    q = queue(batch_size=10)
    gone = q.submit([1, 2], [1, 1])
    failed = q.submit([3], [1])
    kept = q.submit([4], [1])
    q.withdraw(gone)
    failed.fail(NotFound("stopped"))
    batch = q.take(1)
    assert batch is not None and batch.inputs == [4]
    assert kept.queued == 0 and len(q) == 0


def test_a_crashed_batch_is_retried_once_first_in_line() -> None:
    q = queue(batch_size=2)
    request = q.submit([1, 2], [1, 1])
    later = q.submit([3], [1])
    batch = q.take(1)
    assert batch is not None
    q.rescue(batch, "replica 0 of thermal:1")
    assert q.retries == 1 and len(q) == 3
    retried = q.take(2)
    assert retried is not None and retried.inputs == [1, 2]
    q.rescue(retried, "replica 1 of thermal:1")
    assert request.done.is_set()
    assert isinstance(request.error, InternalError)
    assert request.error.message == "replica 1 of thermal:1 crashed twice while predicting"
    assert q.errors == 2
    survivor = q.take(3)
    assert survivor is not None and survivor.inputs == [3]
    assert not later.done.is_set()


def test_model_errors_fail_the_batch_requests() -> None:
    q = queue()
    request = q.submit([1], [1])
    batch = q.take(1)
    assert batch is not None
    q.fail(batch, InternalError("model raised"))
    assert request.error is not None and request.error.message == "model raised"
    q.complete(batch, ["late"])  # a late answer changes nothing
    assert request.outputs == [None]


def test_fail_all_empties_the_queue() -> None:
    q = queue()
    requests = [q.submit([i], [1]) for i in range(3)]
    q.fail_all(lambda: NotFound("thermal:1 was stopped"))
    assert len(q) == 0
    assert all(isinstance(r.error, NotFound) for r in requests)
    assert len({id(r.error) for r in requests}) == 3


def test_a_failed_mixed_batch_is_split_and_its_inputs_sent_alone() -> None:
    q = queue(batch_size=8)
    mine = q.submit([1, 2], [1, 1])
    theirs = q.submit([3], [1])
    later = q.submit([4], [1])
    batch = q.take(1)
    assert batch is not None and batch.inputs == [1, 2, 3, 4]
    assert q.split(batch)  # several requests: put back, each input alone
    assert (q.splits, len(q)) == (1, 4)
    alone = [q.take(2 + n) for n in range(4)]
    assert [b.inputs for b in alone if b is not None] == [[1], [2], [3], [4]]
    only_mine = alone[0]
    assert only_mine is not None and not q.split(only_mine)  # one request's: the caller fails it
    q.fail(only_mine, InternalError("model raised on 1"))
    assert mine.error is not None and theirs.error is None and later.error is None
