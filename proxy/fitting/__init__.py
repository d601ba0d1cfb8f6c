"""Fit jobs: a fittable model (:class:`bus.fittable.Fittable`) retrained into a new version.

Door: it uses the registry (jobs are durable there) and the backend's sandbox (the fit runs in a
one-shot worker, :mod:`proxy.fitting.worker`, never in the proxy); reading training data from
the bus and deploying the new version are functions the service passes in
(:mod:`proxy.service.operations.fit`), so nothing here knows slots or the version switch.
"""

from proxy.fitting.jobs import FitJobs, Training
from proxy.fitting.runner import FitFailed, FitLimits

__all__ = ["FitFailed", "FitJobs", "FitLimits", "Training"]
