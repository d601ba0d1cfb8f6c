"""The chooser: which models answer "thermal, zone A, tomorrow, 30 min", and one merged answer.

Pure logic, no I/O (DESIGN §6): ``proxy/`` wires it to the registry, the backend and the bus.
The contract, in the order the wiring uses it:

1. **Deploy** — ``ModelMetadata.parse(data)`` validates untrusted metadata (``MetadataError``
   lists one ``(field, message)`` per bad field). ``CandidateIndex.add(Candidate(ref, metadata,
   created_ns))`` indexes it by ``(type, place kind, place id)``; ``remove`` and
   ``set_current`` keep the index in step with the registry.
2. **Places** — ``PlaceTree.from_turtle(text)`` reads a Brick model the caller has read.
3. **Ask** — ``Query.parse(type, context, start, end, granularity)`` (``QueryError``, a
   ``ValueError`` naming the field). For ``has_can_predict`` models,
   ``verdict_requests(query, index, places, usable)`` lists the ``can_predict`` questions; the
   wiring answers them in the models' workers (a timeout, an error or a non-bool is ``False``).
4. **Plan** — ``plan(query, index, places, verdicts, usable) -> Plan``: segments (one model call
   each, with the fallback order the wiring tries when a call fails), compositions (children
   summed, additive types) and gaps with reasons. ``usable`` filters what the requester may use:
   a model it rejects shapes neither the plan nor a gap's reason.
5. **Call** — for each segment of ``plan.calls()`` and each choice in order:
   ``SegmentRequest.for_choice(query.model_type, segment, choice).to_input()`` is the model's
   input; ``validate_output(request, raw)`` checks its answer (``ModelOutputError`` names the
   model). The first valid answer is ``Answered(choice, series)``; if all fail, ``Failed(reason)``.
6. **Merge** — ``stitch(plan, outcomes) -> Answer``: values on exactly the asked grid,
   provenance per point, gaps stated, never filled; ``Answer.to_wire()`` for the reply.

Listing: ``index.find(type, place, usable)`` gives the candidates, and
``covered_intervals(metadata.coverage, start_ns, end_ns)`` what each covers in a range.

``bench_plan`` times step 4 for the ``bench choose`` program. All instants are epoch
nanoseconds (UTC) in ``int``; a step's seconds are ``int``.
"""

from chooser.bench import bench_plan
from chooser.coverage import covered_intervals
from chooser.index import Candidate, CandidateIndex, ModelRef
from chooser.merge import Answer, Answered, Failed, SegmentOutcome, stitch
from chooser.metadata import (
    AGGREGATION,
    KNOWN_TYPES,
    Aggregation,
    Coverage,
    DateRange,
    MetadataError,
    ModelMetadata,
    RecurringRule,
)
from chooser.outputs import ModelOutputError, ModelSeries, SegmentRequest, validate_output
from chooser.places import Place, PlacesError, PlaceTree, parse_context
from chooser.plan import (
    Choice,
    Composition,
    Gap,
    Plan,
    Query,
    QueryError,
    Segment,
    VerdictRequest,
    Verdicts,
)
from chooser.planner import plan, verdict_requests
from chooser.timegrid import (
    Grid,
    GridTooLargeError,
    Step,
    TimeGridError,
    build_grid,
    parse_instant,
    parse_step,
)

__all__ = [
    "AGGREGATION",
    "KNOWN_TYPES",
    "Aggregation",
    "Answer",
    "Answered",
    "Candidate",
    "CandidateIndex",
    "Choice",
    "Composition",
    "Coverage",
    "DateRange",
    "Failed",
    "Gap",
    "Grid",
    "GridTooLargeError",
    "MetadataError",
    "ModelMetadata",
    "ModelOutputError",
    "ModelRef",
    "ModelSeries",
    "Place",
    "PlaceTree",
    "PlacesError",
    "Plan",
    "Query",
    "QueryError",
    "RecurringRule",
    "Segment",
    "SegmentOutcome",
    "SegmentRequest",
    "Step",
    "TimeGridError",
    "VerdictRequest",
    "Verdicts",
    "bench_plan",
    "build_grid",
    "covered_intervals",
    "parse_context",
    "parse_instant",
    "parse_step",
    "plan",
    "stitch",
    "validate_output",
    "verdict_requests",
]
