"""The wiring of routing and selection policies (``chooser.policies``) into the service.

``PolicyKeeper`` holds each application's contract or selection policy and keeps its state in
the registry; ``Background`` runs shadow copies and writes the prediction log from bounded
queues, off the served path; ``Pending`` remembers answers awaiting feedback;
``SelectionSpec`` is a selection policy as configured. The operations that use them are in
``proxy.service.operations`` (``routed``: the predict path; ``routes``: the bus operations).

May import: ``bus``, ``chooser``, ``proxy.registry``. Not the slots, not the backend: running a
shadow copy and publishing a log record are callables handed in (``Predictor``, ``Publisher``).
"""

from proxy.routing.background import Background, Predictor, Publisher, ShadowJob
from proxy.routing.keeper import PolicyKeeper, Selection
from proxy.routing.pending import Answered, Pending
from proxy.routing.selection import SelectionSpec

__all__ = [
    "Answered",
    "Background",
    "Pending",
    "PolicyKeeper",
    "Predictor",
    "Publisher",
    "Selection",
    "SelectionSpec",
    "ShadowJob",
]
