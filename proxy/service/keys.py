"""The keys ``modelbus serve`` runs with when the operator names none: the namespace apart.

The namespace key is the root of every grant in the namespace: whoever holds it may do anything
there. So the running service does not hold it. On the first start, with no ``--entity``,
``--namespace`` or ``--proof``, ``serve``:

1. creates the *namespace key* outside the data directory — at ``--namespace-key``,
   ``$MODELBUS_NAMESPACE_KEY``, or ``$XDG_CONFIG_HOME/modelbus/namespace.key``
   (``~/.config/modelbus/namespace.key``), mode 0600 in a 0700 directory — and tells the
   operator to keep it offline (it signs users' grants; the service never needs it again until
   its own grants near their expiry);
2. creates the *service key* in the data directory (``service.key``);
3. has the namespace key grant the service key exactly what serving needs, one chain each in
   ``service-grants/`` (each valid :data:`GRANT_DAYS` days), for ``S = <namespace>/<service
   path>``:

   - ``C`` on ``S/i.modelbus/slot/*`` — consume its request slots;
   - ``P`` on ``S/i.modelbus/signal/*`` — publish replies;
   - ``P`` on ``S/!meta/*`` — publish its liveness, birth and death;
   - ``C*`` on ``<namespace>/*/!meta/+`` and on ``<namespace>/*/!meta/instances/+/+`` — read
     the namespace's liveness, its services' and their named instances' (a hosted dashboard; a
     named instance lists its siblings in its plain status).

Later starts use ``service.key`` and the chains, and need the namespace key only to renew chains
that expire within :data:`RENEW_DAYS` (the service warns, and refuses once they have expired).
A data directory from before this scheme holds ``proxy.key``, the namespace root itself: it keeps
serving that namespace, with a warning. With ``--entity`` (or ``--namespace``/``--proof``) the
operator chose the keys, and :func:`provision` is not used.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bus import Entity, Grant, decode_chain, encode_chain, key_to_text
from bus.errors import DecodeError, GrantExpired

__all__ = [
    "GRANT_DAYS",
    "RENEW_DAYS",
    "ServiceKeys",
    "default_namespace_key_file",
    "provision",
    "service_grants",
]

logger = logging.getLogger(__name__)

GRANT_DAYS = 365
RENEW_DAYS = 30
_DAY_NS = 86_400 * 10**9
SERVICE_KEY = "service.key"
LEGACY_KEY = "proxy.key"
GRANTS_DIR = "service-grants"


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """What the service runs with, and what :func:`provision` did to get it."""

    entity_path: Path
    namespace: str  # the namespace key, as text
    proof_paths: tuple[Path, ...]
    namespace_key: Path | None  # where the namespace key is (None: the legacy proxy.key)
    created_namespace_key: bool = False
    renewed_grants: bool = False
    legacy: bool = False  # the data directory's proxy.key is the namespace root


def default_namespace_key_file() -> Path:
    """``$MODELBUS_NAMESPACE_KEY``, else ``$XDG_CONFIG_HOME/modelbus/namespace.key``, else
    ``~/.config/modelbus/namespace.key``."""
    if env := os.environ.get("MODELBUS_NAMESPACE_KEY"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelbus" / "namespace.key"


_NO_NAMESPACE = "ns"  # for counting the grants a service needs


def service_grants(namespace: str, service_path: str) -> list[tuple[str, str]]:
    """(pattern, permissions) the service key needs under ``<namespace>/<service path>``."""
    service = f"{namespace}/{service_path}"
    return [
        (f"{service}/i.modelbus/slot/*", "C"),
        (f"{service}/i.modelbus/signal/*", "P"),
        (f"{service}/!meta/*", "P"),
        (f"{namespace}/*/!meta/+", "C*"),  # the namespace's liveness: a hosted dashboard reads it
        (f"{namespace}/*/!meta/instances/+/+", "C*"),  # and its instances' (bus.liveness)
    ]


def provision(
    data_dir: Path, service_path: str, namespace_key: Path, *, now_ns: int | None = None
) -> ServiceKeys:
    """The service key and its chains in ``data_dir``, made or renewed from ``namespace_key``
    as needed (see the module docstring). Raises DecodeError for unreadable key or chain files,
    GrantExpired when the chains have expired and the namespace key is not there to renew them.
    """
    now = time.time_ns() if now_ns is None else now_ns
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    legacy = data_dir / LEGACY_KEY
    service_file = data_dir / SERVICE_KEY
    if legacy.exists() and not service_file.exists():
        owner = Entity.load(legacy)
        return ServiceKeys(legacy, owner.key_text, (), None, legacy=True)
    grants_dir = data_dir / GRANTS_DIR
    chains = sorted(grants_dir.glob("*.grant")) if grants_dir.is_dir() else []
    expires_ns = _earliest_expiry(chains)
    is_complete = len(chains) == len(service_grants(_NO_NAMESPACE, service_path))
    if (
        service_file.exists()
        and chains
        and expires_ns - now > RENEW_DAYS * _DAY_NS
        and (is_complete or not namespace_key.exists())
    ):
        return ServiceKeys(service_file, _namespace_of(chains[0]), tuple(chains), namespace_key)
    if not namespace_key.exists():
        if service_file.exists() and chains:
            if now < expires_ns:
                days = (expires_ns - now) / _DAY_NS
                logger.warning(
                    "the service's grants expire in %.0f days; restore the namespace key at %s "
                    "for one start to renew them",
                    days,
                    namespace_key,
                )
                return ServiceKeys(
                    service_file, _namespace_of(chains[0]), tuple(chains), namespace_key
                )
            raise GrantExpired(
                f"the service's grants in {grants_dir} have expired; restore the namespace key "
                f"at {namespace_key} (or pass --namespace-key) for one start to renew them",
                expired_ns=expires_ns,
            )
        if service_file.exists():
            raise DecodeError(
                f"{service_file} exists but its grants and the namespace key {namespace_key} do "
                "not; pass --namespace-key with the key that owns this service's namespace"
            )
    created = not namespace_key.exists()
    if created:
        _create_key(namespace_key, "modelbus namespace (keep offline)")
        logger.info("created the namespace key at %s", namespace_key)
    owner = Entity.load(namespace_key)
    if not service_file.exists():
        _create_key(service_file, "modelbus service")
    service = Entity.load(service_file)
    grants_dir.mkdir(mode=0o700, exist_ok=True)
    paths: list[Path] = []
    for index, (pattern, perms) in enumerate(service_grants(owner.key_text, service_path)):
        grant = Grant.create(
            owner,
            service.public_key,
            pattern,
            perms,
            ttl=0,
            expires_ns=now + GRANT_DAYS * _DAY_NS,
            created_ns=now,
        )
        path = grants_dir / f"{index}-{perms}.grant"
        _write_private(path, encode_chain([grant]))
        paths.append(path)
    for stale in set(chains) - set(paths):
        stale.unlink(missing_ok=True)
    return ServiceKeys(
        service_file,
        owner.key_text,
        tuple(paths),
        namespace_key,
        created_namespace_key=created,
        renewed_grants=bool(chains),
    )


def _create_key(path: Path, comment: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    Entity.generate(comment=comment).save(path)


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    temporary.replace(path)


def _earliest_expiry(chains: list[Path]) -> int:
    if not chains:
        return 0
    return min(grant.expires_ns for path in chains for grant in _read_chain(path))


def _namespace_of(path: Path) -> str:
    return key_to_text(_read_chain(path)[0].namespace)


def _read_chain(path: Path) -> tuple[Grant, ...]:
    try:
        return decode_chain(path.read_bytes())
    except OSError as exc:
        raise DecodeError(f"cannot read the service grant {path}: {exc.strerror}") from exc
