"""Clipper's python deployer (``clipper_admin.deployers.python``) for a modelbus service.

Clipper's ``deploy_python_closure`` builds a docker image from a base image on the user's engine;
these ship the function as a closure archive instead — no engine, no base image — and deploy it
through the same ``ClipperConnection``: ``from container_manager import deploy_python_closure``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from container_manager.clipper import BusContainerManager

__all__ = ["create_endpoint", "deploy_python_closure"]


def _manager_of(clipper_conn: Any) -> BusContainerManager:
    manager = getattr(clipper_conn, "cm", None)
    if not isinstance(manager, BusContainerManager):
        raise TypeError("pass a ClipperConnection made with a BusContainerManager")
    return manager


def deploy_python_closure(
    clipper_conn: Any,
    name: str,
    version: Any,
    input_type: str,
    func: Callable[..., Any],
    labels: Sequence[str] | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    *,
    metadata: Mapping[str, Any] | None = None,
    packages: Mapping[str, str] | None = None,
) -> None:
    """``clipper_admin.deployers.python.deploy_python_closure`` for a modelbus service: the
    function is shipped as a closure archive instead of a docker image (no engine, no base
    image), then deployed through ``clipper_conn.deploy_model``."""
    manager = _manager_of(clipper_conn)
    image = manager.build_closure(func, packages=packages)
    if metadata is not None:
        manager.set_model_metadata(name, metadata, version=str(version))
    clipper_conn.deploy_model(
        name,
        version,
        input_type,
        image,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
    )


def create_endpoint(
    clipper_conn: Any,
    name: str,
    input_type: str,
    func: Callable[..., Any],
    default_output: str = "None",
    version: Any = 1,
    slo_micros: int = 3_000_000,
    labels: Sequence[str] | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    *,
    metadata: Mapping[str, Any] | None = None,
    packages: Mapping[str, str] | None = None,
) -> None:
    """``clipper_admin.deployers.python.create_endpoint``: an application, a closure model of
    the same name, and the link between them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        func,
        labels,
        num_replicas,
        batch_size,
        metadata=metadata,
        packages=packages,
    )
    clipper_conn.link_model_to_app(name, name)
