"""A model image's build context, written from Python: the model on the modelbus base image.

    from bus.fittable import Fittable
    from container_manager.images import write_model_image

    write_model_image("thermal-image", Fittable(predict, fit, state={"mean": 0.0}))
    # docker build -t thermal:1 thermal-image   (or podman build)
    # then ship it: BusContainerManager.upload_image("thermal:1"), or ServiceClient's
    # upload_artifact(tarball, kind="image") and deploy_artifact(..., kind="image", image=...)

The context holds the model as a closure archive (:func:`bus.artifact.build_closure_archive`,
so build it with the same Python as the base image) at ``/model/model.closure`` and a
``Dockerfile`` ``FROM`` the base image (``deploy/base-image/``) that says where the model is
(label ``modelbus.entry``) and, for a model with ``fit`` (a :class:`bus.fittable.Fittable`),
how it is fitted (for another model, that it is not): label ``modelbus.fit``, the base image's
fit program, which loads the model, calls ``fit(data, context)`` and writes the fitted model as
the new version's state (bus/PROTOCOL.md §18.9). ``modelbus fit NAME`` then fits the image
version like a closure: the fit runs in a one-shot container of the image, and the new version
is the same image with the fitted state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from bus.artifact import build_closure_archive

__all__ = ["BASE_IMAGE", "FIT_COMMAND", "write_model_image"]

BASE_IMAGE = "localhost/modelbus-base:latest"
"""The tag ``deploy/base-image/build.sh`` gives the base image."""
FIT_COMMAND = ("python3", "-m", "proxy.fitting.worker")
"""The base image's fit program (its ``modelbus.fit`` label), bus/PROTOCOL.md §18.9."""
MODEL_PATH = "/model/model.closure"

_DOCKERFILE = """\
# A modelbus model image (container_manager.images.write_model_image).
ARG BASE={base}
FROM ${{BASE}}
COPY model.closure {model_path}
LABEL modelbus.entry="closure:{model_path}" \\
      modelbus.fit='{fit_command}'
"""


def write_model_image(
    directory: str | Path,
    model: Callable[..., Any],
    *,
    base: str = BASE_IMAGE,
    packages: Mapping[str, str] | None = None,
    by_value: Iterable[ModuleType] = (),
) -> Path:
    """Write ``model.closure`` and ``Dockerfile`` into ``directory`` (made if missing); the
    directory. ``packages`` and ``by_value`` are :func:`~bus.artifact.build_closure_archive`'s.
    A model with ``fit`` and ``with_state`` gets the base image's fit program as its
    ``modelbus.fit`` label; another model an empty one: it declares no fit."""
    context = Path(directory)
    context.mkdir(parents=True, exist_ok=True)
    archive = build_closure_archive(model, packages=packages, by_value=by_value)
    (context / "model.closure").write_bytes(archive)
    fittable = all(callable(getattr(model, name, None)) for name in ("fit", "with_state"))
    command = json.dumps(list(FIT_COMMAND)) if fittable else ""  # "": no fit (the base has one)
    dockerfile = _DOCKERFILE.format(base=base, model_path=MODEL_PATH, fit_command=command)
    (context / "Dockerfile").write_text(dockerfile)
    return context
