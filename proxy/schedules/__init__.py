"""Schedules: predictions on a fixed grid of windows, backfilled after downtime, run once each.

Door: it uses the registry (schedules and windows are durable there) and ``bus`` (inputs and
outputs are bus messages); the model is called through a function the service passes in, so
nothing here knows slots or the backend. :mod:`proxy.schedules.plan` is the pure scheduling
logic (no I/O, the clock passed in); :mod:`proxy.schedules.scheduler` runs it;
:mod:`proxy.schedules.windows` holds its seams (inputs, the model, outputs);
:mod:`proxy.schedules.busio` reads inputs from and publishes outputs to the bus.
"""

from proxy.schedules.plan import Spec, parse_duration, window_key
from proxy.schedules.scheduler import Scheduler, WindowData

__all__ = ["Scheduler", "Spec", "WindowData", "parse_duration", "window_key"]
