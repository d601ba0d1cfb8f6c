"""The XBOS prediction API on ``slot/predict``: ``forecast`` and ``forecast.models`` (DESIGN §6).

The pure decisions are :mod:`chooser`'s; this room wires them to the registry, the backend and the
bus:

- :mod:`.metadata` — model metadata checked at deploy (a map with a ``type`` key serves the range
  API and must be valid :class:`chooser.ModelMetadata`);
- :mod:`.catalog` — the candidate index, derived from the registry and rebuilt whenever the
  registry's models change (``Registry.models_generation``), so no caller invalidates it;
- :mod:`.access` — what a requester may use: every training stream consumable (``C``) through the
  grant chains it presents with the request;
- :mod:`.caches` — bounded LRU caches: ``can_predict`` verdicts and model results (TTL);
- :mod:`.calls` — asking ``can_predict`` in the models' workers, and calling the chosen models
  concurrently with fallback;
- :mod:`.ops` — the two operations.
"""
