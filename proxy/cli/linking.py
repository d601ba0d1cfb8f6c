"""What ``modelbus deploy --link APP`` checks before it uploads anything.

The service would refuse the link only after the upload and the deploy (bus/PROTOCOL.md §17.4,
``app.link``): an application that does not exist, takes another input type, or is linked to
another model. :func:`check_link` asks first, so such a deploy fails having done nothing.
"""

from __future__ import annotations

from bus import Conflict, InvalidRequest, NotFound
from container_manager.service import ServiceClient

__all__ = ["check_link"]


async def check_link(
    service: ServiceClient, app: str, model: str, input_type: str, service_arg: str
) -> None:
    """Raise the error ``app.link`` would give after the deploy, naming the fix."""
    where = f"--service {service_arg}"
    try:
        found = await service.get_app_info(app)
    except NotFound:
        raise NotFound(
            f"no application named {app!r}: register it first (modelbus apps register {app} "
            f"--input-type {input_type} {where}) or leave out --link; nothing was uploaded",
            app=app,
        ) from None
    if found.get("input_type") != input_type:
        raise InvalidRequest(
            f"application {app!r} takes {found.get('input_type')} inputs, not {input_type} "
            "(--input-type); nothing was uploaded",
            app=app,
        )
    linked = [str(name) for name in found.get("linked_models") or []]
    if linked and model not in linked:
        raise Conflict(
            f"application {app!r} is linked to model {linked[0]!r} (one model per application): "
            f"modelbus apps unlink {app} {linked[0]} {where}; nothing was uploaded",
            app=app,
        )
