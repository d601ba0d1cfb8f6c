"""The demos ``modelbus demo`` runs end to end: the tour (:mod:`~proxy.bench.demos.tour`), its
forecast part (:mod:`~proxy.bench.demos.forecast`) and the fit demo
(:mod:`~proxy.bench.demos.fit`)."""
