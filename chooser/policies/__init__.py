"""Routing and selection policies: release contracts, select/combine, bandits, the log's record.

Pure logic, no I/O: every decision takes the instant (``now_ns``) from the caller's clock and
randomness from the caller's seeded ``random.Random``; state is plain data (JSON/msgpack-able
dicts, never pickled) that the wiring in ``proxy/routing/`` stores. The contract:

- **Release contracts** — ``ContractSpec.parse(data)`` (``PolicyError`` names bad fields);
  ``Contract.new(spec, now_ns)`` or ``Contract(spec, ContractState.from_data(stored))``;
  ``route`` → ``Route(version, shadows, reason)``; ``record_answer``, ``feed_metric``,
  ``expire``, ``restore``, ``refresh``, ``show``. Gates in ``validity``, shares in ``routing``,
  expiry in ``expiry``.
- **Shadow comparison** — ``difference(served, shadow)``.
- **Select/combine** — ``combine(mode, parts, weights, deadline_ns)`` → ``Combined``.
- **Selection** — ``SelectionPolicy`` (epsilon-greedy, Exp3, Thompson Beta/Gaussian, UCB1),
  ``choose`` → ``Decision``, ``learn``; rewards from feedback by ``reward_from_truth``;
  per-user state bounded by ``UserStates``.
- **Prediction log** — ``LogRecord``, ``log_key``, ``should_log``, ``key_segment``,
  ``join_actuals``.
"""

from chooser.policies.bandits import POLICIES, Arms, Decision, SelectionPolicy, choose, learn
from chooser.policies.combine import COMBINE_MODES, Combined, CombineMode, Part, combine
from chooser.policies.contract import Contract
from chooser.policies.predlog import LogRecord, join_actuals, key_segment, log_key, should_log
from chooser.policies.reward import difference, reward_from_truth
from chooser.policies.routing import Route, pick, shares, stable_unit
from chooser.policies.spec import ContractSpec, Expiry, LogSpec, PolicyError, ReleaseSpec
from chooser.policies.state import ContractState, ReleaseState
from chooser.policies.users import DEFAULT_USER_LIMIT, UserStates, candidate_key
from chooser.policies.validity import Verdict, verdict

__all__ = [
    "COMBINE_MODES",
    "DEFAULT_USER_LIMIT",
    "POLICIES",
    "Arms",
    "CombineMode",
    "Combined",
    "Contract",
    "ContractSpec",
    "ContractState",
    "Decision",
    "Expiry",
    "LogRecord",
    "LogSpec",
    "Part",
    "PolicyError",
    "ReleaseSpec",
    "ReleaseState",
    "Route",
    "SelectionPolicy",
    "UserStates",
    "Verdict",
    "candidate_key",
    "choose",
    "combine",
    "difference",
    "join_actuals",
    "key_segment",
    "learn",
    "log_key",
    "pick",
    "reward_from_truth",
    "shares",
    "should_log",
    "stable_unit",
    "verdict",
]
