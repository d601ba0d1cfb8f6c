"""Applications and their links to models, as Clipper manages them.

An application has a Clipper input type, a default output and a latency SLO. It links at most
one model (Clipper's rule), whose current version must take the application's input type.
Deleting an application deletes its link.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus.errors import Conflict, InvalidRequest, NotFound
from proxy.registry.records import Application, InputType
from proxy.registry.sql import (
    APP_SELECT,
    Database,
    Session,
    build,
    current_version_of,
    find_app,
    find_model,
)

__all__ = ["AppStore"]


class AppStore:
    """Applications and their links: the part of :class:`proxy.registry.registry.Registry` they
    make."""

    _db: Database
    apps_generation: int = 0
    """Counts the committed changes to applications and links in this process: a cache of
    applications is valid while the generation it was read at is the current one."""

    @asynccontextmanager
    async def _changing_apps(self) -> AsyncIterator[Session]:
        """A write transaction that changes applications or links: counted once committed."""
        async with self._db.write() as session:
            yield session
        self.apps_generation += 1

    async def register_application(
        self,
        name: str,
        input_type: InputType,
        default_output: str,
        latency_slo_micros: int,
        description: str = "",
    ) -> Application:
        """Clipper's ``register_application``; an existing name is a :class:`Conflict`."""
        async with self._changing_apps() as s:
            app = build(
                Application,
                name=name,
                input_type=input_type,
                default_output=default_output,
                latency_slo_micros=latency_slo_micros,
                description=description,
                created_ns=s.clock(),
                linked_model=None,
            )
            if await s.row("SELECT 1 FROM applications WHERE name = ?", (name,)):
                raise Conflict(f"application {name!r} already exists", app=name)
            await s.exec(
                "INSERT INTO applications VALUES (?, ?, ?, ?, ?, ?)",
                (name, input_type, default_output, latency_slo_micros, description, app.created_ns),
            )
        return app

    async def get_application(self, name: str) -> Application:
        """Clipper's ``get_app_info`` (``.to_clipper()`` gives its answer)."""
        async with self._db.read() as s:
            return await find_app(s, name)

    async def list_applications(self) -> list[Application]:
        """Clipper's ``get_all_apps``, by name."""
        async with self._db.read() as s:
            return [
                s.load(Application, row) for row in await s.rows(APP_SELECT + " ORDER BY a.name")
            ]

    async def delete_application(self, name: str) -> Application:
        """Clipper's ``delete_application``: the application and its link; returns what it was."""
        async with self._changing_apps() as s:
            app = await find_app(s, name)
            await s.exec("DELETE FROM applications WHERE name = ?", (name,))
        return app

    async def link_model(self, app_name: str, model_name: str) -> Application:
        """Clipper's ``link_model_to_app``."""
        async with self._changing_apps() as s:
            app = await find_app(s, app_name)
            if app.linked_model is not None:
                raise _already_linked(app, model_name)
            current = await current_version_of(s, model_name)
            if current is None:
                raise NotFound(f"no model named {model_name!r}", model=model_name)
            model = await find_model(s, model_name, current)
            if model.input_type != app.input_type:
                raise InvalidRequest(
                    f"model {model_name!r} (current version {current!r}) takes "
                    f"{model.input_type}, but application {app_name!r} sends {app.input_type}",
                    app=app_name,
                    model=model_name,
                )
            await s.exec("INSERT INTO links VALUES (?, ?, ?)", (app_name, model_name, s.clock()))
        return app.model_copy(update={"linked_model": model_name})

    async def unlink_model(self, app_name: str, model_name: str) -> Application:
        """Clipper's ``unlink_model_from_app``; a link that does not exist is :class:`NotFound`."""
        async with self._changing_apps() as s:
            app = await find_app(s, app_name)
            if app.linked_model != model_name:
                linked = f" (it is linked to {app.linked_model!r})" if app.linked_model else ""
                raise NotFound(
                    f"application {app_name!r} is not linked to model {model_name!r}{linked}",
                    app=app_name,
                    model=model_name,
                    linked_model=app.linked_model,
                )
            await s.exec("DELETE FROM links WHERE app_name = ?", (app_name,))
        return app.model_copy(update={"linked_model": None})

    async def linked_models(self, app_name: str) -> list[str]:
        """Clipper's ``get_linked_models``: an unknown application is :class:`NotFound`."""
        app = await self.get_application(app_name)
        return [] if app.linked_model is None else [app.linked_model]


def _already_linked(app: Application, model_name: str) -> Conflict:
    if app.linked_model == model_name:
        message = f"model {model_name!r} is already linked to application {app.name!r}"
    else:
        message = (
            f"application {app.name!r} is already linked to model {app.linked_model!r}; an "
            "application serves one model (as in Clipper): unlink it first"
        )
    return Conflict(message, app=app.name, model=model_name, linked_model=app.linked_model)
