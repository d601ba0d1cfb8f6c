"""``can_predict`` questions answered in the worker: mixed with model inputs in one chunk, a rule
that is missing, raises, hangs past its limit or returns a non-bool answers "cannot" with the
reason; the backend's reading of an answer. (Through real workers: tests/proxy/service/forecast/
test_calls.py.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from proxy.backend.verdicts import Verdict, _read, answer, answer_questions, ask, question

Q = question(1517299200 * 10**9, 1517342400 * 10**9, 900, 0.2)


def model(inputs: list[Any]) -> list[Any]:
    return [x * 2 for x in inputs]


def with_rule(rule: Any) -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        return model(inputs)

    predict.can_predict = rule  # type: ignore[attr-defined]
    return predict


def test_questions_are_answered_beside_the_model_inputs() -> None:
    func = with_rule(lambda start, end, resolution: start.hour == 8 and resolution == 900)
    seen: list[list[Any]] = []

    def run(inputs: list[Any]) -> list[Any]:
        seen.append(inputs)
        return model(inputs)

    assert answer_questions([1, Q, 2], run, func) == [2, {"verdict": True}, 4]
    assert seen == [[1, 2]]
    assert answer_questions([Q], run, func) == [{"verdict": True}] and len(seen) == 1
    assert answer_questions([3], run, func) == [6]


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (None, "the model ships no can_predict"),
        (lambda *a: 1 / 0, "can_predict raised ZeroDivisionError"),
        (lambda *a: time.sleep(5), "did not answer within 0.2 s"),
        (lambda *a: "yes", "can_predict returned a str"),
    ],
)
def test_a_rule_that_does_not_answer_a_bool_cannot(rule: Any, reason: str) -> None:
    func = model if rule is None else with_rule(rule)
    began = time.monotonic()
    found = answer(func, Q)
    assert time.monotonic() - began < 2
    assert found["verdict"] is None and reason in found["reason"]


def test_a_malformed_question_is_refused() -> None:
    bad = {"modelbus.can_predict": {"start_ns": "soon"}}
    assert answer(with_rule(lambda *a: True), bad)["reason"] == "a malformed can_predict question"


def test_the_backend_reads_only_true_as_able() -> None:
    assert _read({"verdict": True}) == Verdict(True)
    assert _read({"verdict": False}) == Verdict(False, "can_predict said no")
    assert _read({"verdict": None, "reason": "x" * 1000}).reason == "x" * 300
    assert not _read("yes").able and not _read({"verdict": 1}).able


async def test_ask_sends_one_question_with_the_limit() -> None:
    class Backend:
        async def predict(
            self, name: str, version: str, inputs: list[Any], timeout_s: float
        ) -> list[Any]:
            assert (name, version, timeout_s) == ("m", "1", 5.5)
            assert inputs == [question(1, 2, 3, 0.5)]
            return [{"verdict": True}]

    assert await ask(Backend(), "m", "1", 1, 2, 3, time_limit_s=0.5) == Verdict(True)


def test_process_workers_import_this_repository() -> None:
    """Workers find ``proxy.backend.verdicts`` where the service's own packages are: the
    repository root, not ``proxy/``, leads their PYTHONPATH."""
    import os
    from pathlib import Path

    import proxy
    from proxy.backend.runtime import ProcessRuntime, ReplicaSpec

    runtime = ProcessRuntime(Path("/nonexistent"))
    spec = ReplicaSpec("m", "1", 0, Path("a"), "tcp://127.0.0.1:1", "t", 1, 1.0)
    root = runtime._environment(spec)["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(root) == Path(proxy.__file__).resolve().parents[1]
