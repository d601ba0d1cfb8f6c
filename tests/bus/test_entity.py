"""Entities: Ed25519 keys, their text form, signatures and entity files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import BadSignature, DecodeError, Entity, key_from_text, key_to_text, public_key_of
from bus import uri as uris
from bus.entity import verify


@given(st.binary(min_size=32, max_size=32))
def test_key_text_round_trip(key: bytes) -> None:
    text = key_to_text(key)
    assert len(text) == 43
    assert "=" not in text
    assert key_from_text(text) == key
    assert uris.parse(f"{text}/a") == (text, "a")  # a key is a valid namespace segment


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A" * 42,
        "A" * 44,
        "A" * 42 + "=",
        "A" * 42 + "!",
        "A" * 42 + "+",  # standard base64, not base64url
        "A" * 42 + "/",
        "A" * 42 + "B",  # unused low bits set: a second spelling of the key ending in "A"
        "\u00e9" * 43,
        43,
    ],
)
def test_bad_key_text_raises_decode_error(text: object) -> None:
    with pytest.raises(DecodeError):
        key_from_text(text)  # type: ignore[arg-type]


def test_sign_and_verify() -> None:
    alice, mallory = Entity.generate(), Entity.generate()
    signature = alice.sign(b"message")
    assert len(signature) == 64
    verify(alice.public_key, b"message", signature)
    with pytest.raises(BadSignature):
        verify(alice.public_key, b"messagE", signature)
    with pytest.raises(BadSignature):
        verify(mallory.public_key, b"message", signature)
    with pytest.raises(BadSignature):
        verify(alice.public_key, b"message", signature[:-1])
    with pytest.raises(BadSignature):
        verify(b"\x00" * 31, b"message", signature)


def test_signing_is_deterministic_for_a_seed() -> None:
    seed = bytes(range(32))
    assert Entity(seed).public_key == Entity(seed).public_key
    assert Entity(seed).sign(b"x") == Entity(seed).sign(b"x")


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(DecodeError):
        Entity(seed)


def test_save_and_load(tmp_path: Path) -> None:
    entity = Entity.generate(comment="thermal model service")
    path = tmp_path / "svc.ent"
    entity.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Entity.load(path)
    assert loaded.public_key == entity.public_key
    assert loaded.comment == "thermal model service"
    assert loaded.sign(b"x") == entity.sign(b"x")
    assert public_key_of(str(path)) == entity.public_key
    assert public_key_of(entity.key_text) == entity.public_key


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "svc.ent"
    Entity.generate().save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        Entity.generate().save(path)
    assert path.read_bytes() == before


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    path.chmod(0o600)  # refused for what it holds, not for who may read it
    return path


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    entity = Entity.generate()
    entity.save(tmp_path / "good.ent")
    good = json.loads((tmp_path / "good.ent").read_text())
    other = Entity.generate()
    cases = {
        "missing.ent": None,
        "notjson.ent": "{",
        "list.ent": [],
        "wrongtype.ent": {**good, "type": "ssh-key"},
        "public-only.ent": {k: v for k, v in good.items() if k != "secret_seed"},
        "mismatch.ent": {**good, "public_key": other.key_text},
        "badseed.ent": {**good, "secret_seed": "not-a-key"},
    }
    for name, document in cases.items():
        path = tmp_path / name
        if isinstance(document, str):
            path.write_text(document)
            path.chmod(0o600)
        elif document is not None:
            _write(path, document)
        with pytest.raises(DecodeError):
            Entity.load(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_a_secret_key_others_may_read_is_refused_with_the_chmod_that_fixes_it(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "svc.ent"
    Entity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(DecodeError) as refused:
        Entity.load(path)
    assert refused.value.message == (
        f"{path} holds a secret key and others may read it (mode {mode:04o}); refusing to use "
        f"it: run chmod 600 {path}"
    )
    path.chmod(0o600)
    assert Entity.load(path).public_key == public_key_of(str(path))
    path.chmod(0o400)  # read-only for its owner is fine too
    Entity.load(path)


def test_public_key_of_a_public_only_file(tmp_path: Path) -> None:
    entity = Entity.generate()
    path = _write(
        tmp_path / "pub.ent",
        {"type": "modelbus-entity", "version": 1, "public_key": entity.key_text},
    )
    assert public_key_of(str(path)) == entity.public_key
    with pytest.raises(DecodeError, match="only a public key"):
        Entity.load(path)


def test_repr_and_errors_never_show_the_seed(tmp_path: Path) -> None:
    seed = os.urandom(32)
    entity = Entity(seed)
    assert repr(entity) == f"Entity({entity.key_text})"
    for form in (key_to_text(seed), seed.hex()):
        assert form not in repr(entity)
    try:
        verify(entity.public_key, b"x", b"\x00" * 64)
    except BadSignature as error:
        assert key_to_text(seed) not in str(error) + repr(error.details)
        assert error.details == {"signer": entity.key_text}


def test_generated_keys_never_read_as_command_line_options() -> None:
    # 1 in 64 random keys starts with '-': 500 draws would meet one with near certainty
    assert not [e for e in (Entity.generate() for _ in range(500)) if e.key_text.startswith("-")]
