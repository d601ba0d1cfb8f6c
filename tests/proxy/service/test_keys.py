"""The namespace key kept apart from the service key (proxy.service.keys), on real files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bus import Entity, Verifier, decode_chain
from bus.errors import GrantExpired, OutOfScope, PermissionMissing
from proxy.service.keys import GRANT_DAYS, RENEW_DAYS, provision

DAY_NS = 86_400 * 10**9
NOW = 1_800_000_000 * 10**9
PATH = "s.modelbus/_"


def _chains(keys_proofs: tuple[Path, ...]) -> list[tuple[bytes, ...]]:
    return [tuple(g.encode() for g in decode_chain(p.read_bytes())) for p in keys_proofs]


def _allowed(service: Entity, proofs: tuple[Path, ...], uri: str, right: str) -> bool:
    verifier = Verifier()
    for chain in _chains(proofs):
        try:
            verifier.authorize(service.public_key, chain, uri, right, now_ns=NOW + DAY_NS)
        except (OutOfScope, PermissionMissing):
            continue
        return True
    return False


def test_first_start_creates_a_namespace_key_outside_the_data_dir(tmp_path: Path) -> None:
    data, ns_key = tmp_path / "data", tmp_path / "config" / "modelbus" / "namespace.key"
    keys = provision(data, PATH, ns_key, now_ns=NOW)
    assert keys.created_namespace_key and not keys.legacy
    owner = Entity.load(ns_key)
    service = Entity.load(keys.entity_path)
    assert keys.entity_path.parent == data and keys.namespace == owner.key_text
    assert service.key_text != owner.key_text
    assert stat.S_IMODE(ns_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ns_key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for proof in keys.proof_paths:
        assert proof.is_relative_to(data)
        assert stat.S_IMODE(proof.stat().st_mode) == 0o600
    # No file in the data directory holds the namespace key's secret.
    assert all(Entity.load(p).key_text != owner.key_text for p in data.rglob("*.key"))


def test_the_service_is_granted_only_what_serving_needs(tmp_path: Path) -> None:
    keys = provision(tmp_path / "data", PATH, tmp_path / "ns.key", now_ns=NOW)
    service = Entity.load(keys.entity_path)
    s = f"{keys.namespace}/{PATH}"
    assert _allowed(service, keys.proof_paths, f"{s}/i.modelbus/slot/predict", "C")
    assert _allowed(service, keys.proof_paths, f"{s}/i.modelbus/signal/reply/abc", "P")
    assert _allowed(service, keys.proof_paths, f"{s}/!meta/lastalive", "P")
    assert _allowed(service, keys.proof_paths, f"{s}/!meta/instances/eu-1/state", "P")
    # A named instance reads its siblings' records (its plain status lists them).
    assert _allowed(service, keys.proof_paths, f"{s}/!meta/instances/+/+", "C+")
    # Not: publishing on its own slots, consuming replies, anything else in the namespace.
    assert not _allowed(service, keys.proof_paths, f"{s}/i.modelbus/slot/admin", "P")
    assert not _allowed(service, keys.proof_paths, f"{s}/i.modelbus/signal/reply/abc", "C")
    assert not _allowed(service, keys.proof_paths, f"{keys.namespace}/other/thing", "P")
    assert not _allowed(service, keys.proof_paths, f"{keys.namespace}/s.other/_/!meta/x", "P")
    for chain in _chains(keys.proof_paths):
        assert len(chain) == 1


def test_later_starts_need_no_namespace_key_until_renewal(tmp_path: Path) -> None:
    data, ns_key = tmp_path / "data", tmp_path / "ns.key"
    first = provision(data, PATH, ns_key, now_ns=NOW)
    offline = tmp_path / "ns.key.offline"
    ns_key.rename(offline)  # the operator took it offline
    again = provision(data, PATH, ns_key, now_ns=NOW + DAY_NS)
    assert (again.entity_path, again.namespace) == (first.entity_path, first.namespace)
    assert not again.renewed_grants and not ns_key.exists()
    # Near expiry without the key: still serving (with a warning); past it: refused.
    late = NOW + (GRANT_DAYS - RENEW_DAYS + 1) * DAY_NS
    assert provision(data, PATH, ns_key, now_ns=late).namespace == first.namespace
    with pytest.raises(GrantExpired, match="restore the namespace key"):
        provision(data, PATH, ns_key, now_ns=NOW + (GRANT_DAYS + 1) * DAY_NS)
    # With the key back, the grants are renewed; the service key stays.
    offline.rename(ns_key)
    renewed = provision(data, PATH, ns_key, now_ns=late)
    assert renewed.renewed_grants and renewed.entity_path == first.entity_path
    expiry = min(g.expires_ns for p in renewed.proof_paths for g in decode_chain(p.read_bytes()))
    assert expiry == late + GRANT_DAYS * DAY_NS


def test_a_legacy_data_dir_keeps_its_namespace(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    legacy = Entity.generate()
    legacy.save(data / "proxy.key")
    keys = provision(data, PATH, tmp_path / "ns.key", now_ns=NOW)
    assert keys.legacy and keys.namespace == legacy.key_text and keys.proof_paths == ()
    assert not (tmp_path / "ns.key").exists()
