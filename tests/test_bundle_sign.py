from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.sign import (
    KeyAlgorithm,
    load_private_key,
    load_public_key,
    open_envelope,
    pae,
    parse_envelope,
    sign_envelope,
    write_keypair,
)
from edgetune.errors import ConfigError, OutputError

TYPE = "application/vnd.in-toto+json"


def test_pae_matches_the_dsse_specification() -> None:
    # the example of https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_keygen_sign_and_verify(tmp_path: Path, algorithm: KeyAlgorithm) -> None:
    key_path, pub_path = write_keypair(tmp_path / "fleet", algorithm)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in pub_path.read_bytes()
    key, pub = load_private_key(key_path), load_public_key(pub_path)
    assert key.public.keyid == pub.keyid
    envelope = sign_envelope(b'{"a":1}', TYPE, key)
    assert open_envelope(envelope, [pub], TYPE) == b'{"a":1}'


def test_keygen_refuses_to_replace_a_key(tmp_path: Path) -> None:
    write_keypair(tmp_path / "fleet")
    with pytest.raises(OutputError, match="already exists"):
        write_keypair(tmp_path / "fleet")
    write_keypair(tmp_path / "fleet", overwrite=True)


@pytest.fixture
def signer(tmp_path: Path):  # type: ignore[no-untyped-def]
    key_path, pub_path = write_keypair(tmp_path / "a")
    return load_private_key(key_path), load_public_key(pub_path)


def test_wrong_key_is_a_bad_signature(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    _, other = write_keypair(tmp_path / "other")
    envelope = sign_envelope(b"{}", TYPE, signer[0])
    with pytest.raises(BundleError) as err:
        open_envelope(envelope, [load_public_key(other)], TYPE)
    assert err.value.reason is Reason.BAD_SIGNATURE
    assert "trusted" in str(err.value)


def test_changed_payload_is_tampered(signer) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads(sign_envelope(b'{"version":"1.0"}', TYPE, signer[0]))
    raw["payload"] = base64.b64encode(b'{"version":"9.0"}').decode()
    with pytest.raises(BundleError) as err:
        open_envelope(json.dumps(raw).encode(), [signer[1]], TYPE)
    assert err.value.reason is Reason.TAMPERED


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"payload": "%%%", "payloadType": "x", "signatures": []}',
    b'{"payload": "e30=", "payloadType": "x"}', json.dumps({"payload": 5}).encode(),
])
def test_malformed_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(BundleError) as err:
        parse_envelope(data)
    assert err.value.reason is Reason.MALFORMED


def test_unsigned_envelope_and_wrong_type(signer) -> None:  # type: ignore[no-untyped-def]
    unsigned = json.dumps({"payload": "e30=", "payloadType": TYPE, "signatures": []}).encode()
    with pytest.raises(BundleError) as err:
        open_envelope(unsigned, [signer[1]], TYPE)
    assert err.value.reason is Reason.BAD_SIGNATURE
    other_type = sign_envelope(b"{}", "application/json", signer[0])
    with pytest.raises(BundleError) as err:
        open_envelope(other_type, [signer[1]], TYPE)
    assert err.value.reason is Reason.MALFORMED


def test_unreadable_keys_say_how_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="edgetune keygen"):
        load_private_key(bad)
    with pytest.raises(ConfigError, match="edgetune keygen"):
        load_public_key(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
