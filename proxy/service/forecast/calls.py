"""The forecast's calls to models: ``can_predict`` questions, then one call per chosen segment.

Both run concurrently (an anyio task group, at most ``max_parallel`` calls at once) and each is
bounded by a timeout, so a model that hangs costs the query at most that timeout; the segment
calls of one forecast, fallbacks included, end by ``deadline_s`` after they began (a call that
would start later fails at once), so a chain of failing fallbacks never outlasts the requester.

- ``can_predict``: each question goes to the model's own worker (:mod:`proxy.backend.verdicts`);
  an answer other than ``True`` counts as "cannot". Verdicts the model's rule gave (or failed to
  give: it raised, ran past the limit, returned a non-bool) are cached per (model, version,
  segment, step); a question that could not be asked (no replica, backend timeout) is not.
- segments: for each segment of the plan, its choices in order (the chosen model, then the
  next-best ones able to serve the whole segment): the first valid answer wins; a model error,
  timeout or wrong-shape output (``chooser.validate_output``) moves on to the next choice. When
  all fail the segment is a gap whose reason names each model's failure. A model whose metadata
  declares ``cache_ttl_s`` is answered from the result cache when the same request was answered
  within that time (``Answered.is_cached``).

Every failure is also reported as a *problem* ``{"model", "version", "code", "message",
"start_ns", "end_ns"}``: ``code`` is the bus error code, ``bad_output`` for a wrong shape, or
``can_predict`` for a rule that did not answer ``True``/``False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from bus.errors import BusError
from chooser import (
    Answered,
    Choice,
    Failed,
    ModelMetadata,
    ModelOutputError,
    ModelRef,
    ModelSeries,
    Segment,
    SegmentOutcome,
    SegmentRequest,
    VerdictRequest,
    validate_output,
)
from proxy.backend.embedded import EmbeddedBackend
from proxy.backend.verdicts import Verdict, ask
from proxy.service.forecast.caches import Lru, ResultCache

__all__ = ["Caller", "Problem"]

Problem = dict[str, Any]
_MAX_REASON = 500


def problem(ref: ModelRef, code: str, message: str, start_ns: int, end_ns: int) -> Problem:
    return {
        "model": ref.name,
        "version": ref.version,
        "code": code,
        "message": message[:_MAX_REASON],
        "start_ns": start_ns,
        "end_ns": end_ns,
    }


class Caller:
    def __init__(
        self,
        backend: EmbeddedBackend,
        *,
        call_timeout_s: float,
        can_predict_timeout_s: float,
        deadline_s: float = 20.0,
        max_parallel: int = 16,
        results: ResultCache | None = None,
        verdict_cache: int = 10_000,
    ) -> None:
        self.backend = backend
        self.call_timeout_s = call_timeout_s
        self.deadline_s = deadline_s
        self.can_predict_timeout_s = can_predict_timeout_s
        self.results = results or ResultCache()
        self.verdicts: Lru[VerdictRequest, Verdict] = Lru(verdict_cache)
        self._limit = anyio.CapacityLimiter(max_parallel)

    # -- can_predict -------------------------------------------------------------------------

    async def verdicts_for(
        self, requests: tuple[VerdictRequest, ...], problems: list[Problem]
    ) -> dict[VerdictRequest, bool]:
        found: dict[VerdictRequest, bool] = {}

        async def one(request: VerdictRequest) -> None:
            verdict = await self._verdict(request)
            found[request] = verdict.able
            if not verdict.able and verdict.reason != "can_predict said no":
                problems.append(
                    problem(
                        request.ref, "can_predict", verdict.reason, request.start_ns, request.end_ns
                    )
                )

        async with anyio.create_task_group() as group:
            for request in requests:
                group.start_soon(one, request)
        return found

    async def _verdict(self, request: VerdictRequest) -> Verdict:
        cached = self.verdicts.get(request)
        if cached is not None:
            return cached
        ref = request.ref
        try:
            async with self._limit:
                with anyio.fail_after(self.can_predict_timeout_s + 10.0):
                    verdict = await ask(
                        self.backend,
                        ref.name,
                        ref.version,
                        request.start_ns,
                        request.end_ns,
                        request.resolution_s,
                        time_limit_s=self.can_predict_timeout_s,
                    )
        except BusError as error:
            return Verdict(False, f"can_predict could not be asked: {error.message}")
        except TimeoutError:
            return Verdict(False, "can_predict could not be asked in time")
        self.verdicts.put(request, verdict)
        return verdict

    # -- segments ----------------------------------------------------------------------------

    async def call_segments(
        self,
        model_type: str,
        segments: tuple[Segment, ...],
        metadata: Callable[[ModelRef], ModelMetadata | None],
        problems: list[Problem],
    ) -> dict[Segment, SegmentOutcome]:
        outcomes: dict[Segment, SegmentOutcome] = {}
        deadline = anyio.current_time() + self.deadline_s

        async def one(segment: Segment) -> None:
            outcomes[segment] = await self._segment(
                model_type, segment, metadata, problems, deadline
            )

        async with anyio.create_task_group() as group:
            for segment in segments:
                group.start_soon(one, segment)
        return outcomes

    async def _segment(
        self,
        model_type: str,
        segment: Segment,
        metadata: Callable[[ModelRef], ModelMetadata | None],
        problems: list[Problem],
        deadline: float,
    ) -> SegmentOutcome:
        reasons: list[str] = []
        for choice in segment.choices:
            request = SegmentRequest.for_choice(model_type, segment, choice)
            meta = metadata(choice.ref)
            ttl_s = meta.cache_ttl_s if meta is not None else None
            if ttl_s is not None and (series := self.results.get(request)) is not None:
                return Answered(choice, series, is_cached=True)
            try:
                series = await self._call(request, choice, deadline)
            except _CallFailed as failed:
                problems.append(
                    problem(
                        choice.ref, failed.code, failed.message, segment.start_ns, segment.end_ns
                    )
                )
                reasons.append(f"model {choice.ref}: {failed.message}")
                continue
            if ttl_s is not None:
                self.results.put(request, series, ttl_s)
            return Answered(choice, series)
        return Failed("; ".join(reasons)[:_MAX_REASON] or "no model to call")

    async def _call(self, request: SegmentRequest, choice: Choice, deadline: float) -> ModelSeries:
        ref = choice.ref
        timeout_s = round(min(self.call_timeout_s, deadline - anyio.current_time()), 3)
        if timeout_s <= 0:
            raise _CallFailed("timeout", f"the forecast's {self.deadline_s:g} s were up")
        try:
            async with self._limit:
                with anyio.fail_after(timeout_s + 1.0):
                    [output] = await self.backend.predict(
                        ref.name, ref.version, [request.to_input()], timeout_s=timeout_s
                    )
        except BusError as error:
            raise _CallFailed(error.code, error.message) from None
        except TimeoutError:
            raise _CallFailed("timeout", f"no answer within {timeout_s:.3g} s") from None
        try:
            return validate_output(request, output)
        except ModelOutputError as error:
            raise _CallFailed("bad_output", f"wrong output shape: {error.reason}") from None


class _CallFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
