"""The applications' routing policies in memory, their state kept in the registry.

``PolicyKeeper`` owns every change to contracts and selection policies, so its cache needs no
invalidation from outside: a contract or selection is read from the registry once, then changed
here only. Decisions (``Contract.route``, a selection's choice and learning) are synchronous
code between awaits, so each is atomic on the event loop and concurrent feedback loses no
update. State changed by traffic (answers counted, rewards learnt) is marked dirty and written
by ``flush`` — the wiring runs it every ``flush_s`` and once when the service stops; a crash
loses at most that much. Admin changes are written before they are answered. One proxy per
registry file owns its policies (several proxies sharing a file would overwrite each other's
state).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError, Conflict, InvalidRequest, NotFound
from chooser.policies import Contract, ContractSpec, ContractState, PolicyError, UserStates
from proxy.registry.registry import Registry
from proxy.routing.selection import SelectionSpec

__all__ = ["PolicyKeeper", "Selection", "invalid"]

logger = logging.getLogger(__name__)


def invalid(error: PolicyError, what: str) -> InvalidRequest:
    problems = [{"field": field, "message": message} for field, message in error.problems]
    return InvalidRequest(f"bad {what}: {error}", errors=problems)


@dataclass
class Selection:
    spec: SelectionSpec
    users: UserStates


class PolicyKeeper:
    def __init__(self, registry: Registry, clock: Callable[[], int]) -> None:
        self.registry = registry
        self.clock = clock
        self._contracts: dict[str, Contract | None] = {}
        self._selections: dict[str, Selection | None] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._generation = registry.apps_generation

    async def _follow_apps(self) -> None:
        """Applications changed (one deleted takes its policies): store, then forget, the
        cache — derived from the registry's generation, so no caller has to invalidate it."""
        if self._generation != self.registry.apps_generation:
            self._generation = self.registry.apps_generation
            await self.flush()
            self._contracts.clear()
            self._selections.clear()

    # -- contracts ---------------------------------------------------------------------------

    async def contract(self, app: str) -> Contract | None:
        await self._follow_apps()
        if app not in self._contracts:
            stored = await self.registry.get_policy(app, "contract")
            found = None
            if stored is not None:
                try:
                    spec = ContractSpec.parse(stored[0])
                    found = Contract(spec, ContractState.from_data(stored[1]))
                except PolicyError as error:
                    logger.error("the stored contract of %s is unusable: %s", app, error)
                    raise invalid(error, "stored contract") from None
            self._contracts[app] = found
        return self._contracts[app]

    async def set_contract(
        self,
        app: str,
        data: Any,
        check: Callable[[str, list[str]], Awaitable[None]] | None = None,
    ) -> Contract:
        """Parse and store a contract; ``check(app, versions)`` may refuse its releases."""
        try:
            spec = ContractSpec.parse(data)
        except PolicyError as error:
            raise invalid(error, "contract") from None
        if check is not None:
            await check(app, [release.version for release in spec.releases])
        if await self.selection(app) is not None:
            raise Conflict(f"application {app!r} has a selection policy; delete it first", app=app)
        now = self.clock()
        known = await self.contract(app)
        if known is None:
            contract = Contract.new(spec, now)
        else:
            contract = Contract(known.spec, ContractState.from_data(known.state.to_data()))
            contract.replace_spec(spec, now)
            contract.refresh(now)
        await self.registry.set_policy(app, "contract", spec.to_data(), contract.state.to_data())
        self._contracts[app] = contract
        self._dirty.discard((app, "contract"))
        return contract

    async def change_contract(self, app: str, change: Callable[[Contract], None]) -> Contract:
        """Apply ``change`` (which may raise PolicyError) and store the state at once."""
        contract = await self.contract(app)
        if contract is None:
            raise NotFound(f"application {app!r} has no release contract", app=app)
        try:
            change(contract)
        except PolicyError as error:
            raise invalid(error, "request") from None
        contract.refresh(self.clock())
        await self._save(app, "contract")
        return contract

    # -- selections --------------------------------------------------------------------------

    async def selection(self, app: str) -> Selection | None:
        await self._follow_apps()
        if app not in self._selections:
            stored = await self.registry.get_policy(app, "selection")
            found = None
            if stored is not None:
                spec = SelectionSpec.parse(stored[0])
                try:
                    users = UserStates.from_data(stored[1], spec.user_limit)
                except PolicyError as error:
                    raise invalid(error, "stored selection state") from None
                found = Selection(spec, users)
            self._selections[app] = found
        return self._selections[app]

    async def set_selection(self, app: str, data: Any) -> Selection:
        spec = SelectionSpec.parse(data)
        if await self.contract(app) is not None:
            raise Conflict(f"application {app!r} has a release contract; delete it first", app=app)
        known = await self.selection(app)
        users = UserStates(spec.user_limit)
        if known is not None and known.spec.policy == spec.policy:  # keep what was learnt
            users = UserStates.from_data(known.users.to_data(), spec.user_limit)
        await self.registry.set_policy(app, "selection", spec.to_data(), users.to_data())
        selection = self._selections[app] = Selection(spec, users)
        self._dirty.discard((app, "selection"))
        return selection

    async def delete(self, app: str, kind: str) -> None:
        await self.registry.delete_policy(app, "contract" if kind == "contract" else "selection")
        cache: dict[str, Any] = self._contracts if kind == "contract" else self._selections
        cache[app] = None
        self._dirty.discard((app, kind))

    # -- persistence -------------------------------------------------------------------------

    def touch(self, app: str, kind: str) -> None:
        """Traffic changed this policy's state: written by the next ``flush``."""
        self._dirty.add((app, kind))

    async def _save(self, app: str, kind: str) -> None:
        self._dirty.discard((app, kind))
        if kind == "contract":
            contract = self._contracts.get(app)
            if contract is not None:
                spec, state = contract.spec.to_data(), contract.state.to_data()
                await self.registry.save_policy_state(app, "contract", spec, state)
            return
        selection = self._selections.get(app)
        if selection is not None:
            spec, state = selection.spec.to_data(), selection.users.to_data()
            await self.registry.save_policy_state(app, "selection", spec, state)

    async def flush(self) -> None:
        """Write every dirty state (each a snapshot taken without awaiting in between)."""
        for app, kind in sorted(self._dirty):
            try:
                await self._save(app, kind)
            except BusError as error:
                self._dirty.add((app, kind))
                logger.warning("could not store the %s state of %s: %s", kind, app, error.message)
