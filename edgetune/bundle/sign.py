"""Keys and signatures: Ed25519 or ECDSA P-256 key pairs and DSSE envelopes.

A bundle's manifest is signed the way Sigstore and OpenSSF model-signing sign theirs: the
payload is wrapped in a DSSE envelope (https://github.com/secure-systems-lab/dsse) and the
signature covers the pre-authentication encoding (PAE) of payload type and payload, so a
signature over one kind of document can never be replayed as another. Keys are plain PEM files
(PKCS#8 private, SubjectPublicKeyInfo public); a key's id is the SHA-256 of its public DER.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgetune.bundle.errors import BundleError, Reason
from edgetune.core.fileio import check_writable
from edgetune.errors import ConfigError, MissingExtraError, OutputError

__all__ = [
    "KeyAlgorithm",
    "SigningKey",
    "VerifyKey",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "open_envelope",
    "pae",
    "sign_envelope",
    "write_keypair",
]

MAX_ENVELOPE_BYTES = 4 << 20


class KeyAlgorithm(str, Enum):
    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise MissingExtraError("cryptography", "bundle", "signing and verifying bundles") from None
    return serialization


@dataclass(frozen=True)
class VerifyKey:
    """A trusted public key."""

    key: Any
    keyid: str
    algorithm: KeyAlgorithm

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            if self.algorithm is KeyAlgorithm.ED25519:
                self.key.verify(signature, message)
            else:
                self.key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key and the public half it signs for."""

    key: Any
    public: VerifyKey

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        if self.public.algorithm is KeyAlgorithm.ED25519:
            return bytes(self.key.sign(message))
        return bytes(self.key.sign(message, ec.ECDSA(hashes.SHA256())))


def _verify_key(public: Any) -> VerifyKey:
    serialization = _crypto()  # names the extra when cryptography is missing
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    keyid = hashlib.sha256(der).hexdigest()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return VerifyKey(public, keyid, KeyAlgorithm.ED25519)
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
        return VerifyKey(public, keyid, KeyAlgorithm.ECDSA_P256)
    raise ConfigError(f"unsupported key type {type(public).__name__}; use an Ed25519 or "
                      "ECDSA P-256 key made by: edgetune keygen")


def generate_keypair(algorithm: KeyAlgorithm = KeyAlgorithm.ED25519) -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    serialization = _crypto()  # names the extra when cryptography is missing
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    private: Any = (ed25519.Ed25519PrivateKey.generate() if algorithm is KeyAlgorithm.ED25519
                    else ec.generate_private_key(ec.SECP256R1()))
    private_pem = private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes(private_pem), bytes(public_pem)


def write_keypair(prefix: Path | str, algorithm: KeyAlgorithm = KeyAlgorithm.ED25519,
                  *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (owner-only) and ``PREFIX.pub``; never replace a key unless asked."""
    prefix = Path(prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        check_writable(path, "key")
        if path.exists() and not overwrite:
            raise OutputError(f"key file {str(path)!r} already exists; choose another name or "
                              "pass --force to replace it")
    private_pem, public_pem = generate_keypair(algorithm)
    _write_private(key_path, private_pem)
    from edgetune.core.fileio import atomic_write_bytes

    atomic_write_bytes(pub_path, public_pem, "public key")
    return key_path, pub_path


def _write_private(path: Path, data: bytes) -> None:
    """Create the private key readable by its owner only, from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def load_private_key(path: Path | str) -> SigningKey:
    serialization = _crypto()
    data = _read_key_file(Path(path), "private key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read private key {str(path)!r}: {exc}; give a NAME.key "
                          "made by: edgetune keygen") from None
    return SigningKey(private, _verify_key(private.public_key()))


def load_public_key(path: Path | str) -> VerifyKey:
    serialization = _crypto()
    data = _read_key_file(Path(path), "public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read public key {str(path)!r}: {exc}; give a NAME.pub "
                          "made by: edgetune keygen") from None
    return _verify_key(public)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}; "
                          "check the path") from None
    if len(data) > 64 << 10:
        raise ConfigError(f"{what} {str(path)!r} is {len(data)} bytes, too large for a key; "
                          "give a PEM key file")
    return data


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_envelope(payload: bytes, payload_type: str, key: SigningKey) -> bytes:
    """A DSSE envelope (JSON bytes) carrying ``payload`` and one signature."""
    signature = key.sign(pae(payload_type, payload))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": key.public.keyid, "sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Envelope:
    """A parsed (not yet verified) DSSE envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]


def parse_envelope(data: bytes) -> Envelope:
    """Parse a DSSE envelope strictly; anything unexpected is MALFORMED, never a crash."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise BundleError(Reason.TOO_LARGE, f"signature envelope is {len(data)} bytes, over "
                          f"{MAX_ENVELOPE_BYTES}; this is not an edgetune bundle")
    try:
        raw = json.loads(data.decode("utf-8"))
        sigs = tuple((str(s["keyid"]), _b64(s["sig"])) for s in raw["signatures"]
                     if isinstance(s, dict))
        envelope = Envelope(str(raw["payloadType"]), _b64(raw["payload"]), sigs)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BundleError(Reason.MALFORMED, f"signature envelope is not valid DSSE JSON "
                          f"({type(exc).__name__}); re-create the bundle") from None
    if not envelope.signatures:
        raise BundleError(Reason.BAD_SIGNATURE, "the bundle carries no signature; sign it with: "
                          "edgetune bundle create --sign NAME.key")
    return envelope


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("base64 field is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def open_envelope(data: bytes, keys: Sequence[VerifyKey], payload_type: str) -> bytes:
    """The payload of ``data`` if a trusted key signed it; else a BAD_SIGNATURE error."""
    envelope = parse_envelope(data)
    if envelope.payload_type != payload_type:
        raise BundleError(Reason.MALFORMED, f"payload type is {envelope.payload_type!r}, "
                          f"expected {payload_type!r}; this is not an edgetune bundle")
    if not keys:
        raise ConfigError("no trusted public key given; pass --key NAME.pub")
    message = pae(envelope.payload_type, envelope.payload)
    matched = False
    for keyid, signature in envelope.signatures:
        for key in keys:
            if key.keyid == keyid:
                matched = True
                if key.verify(signature, message):
                    return envelope.payload
    if matched:
        raise BundleError(Reason.TAMPERED, "the signed manifest or its signature was changed "
                          "after signing; get the bundle again from its publisher")
    signed_by = ", ".join(k[:16] for k, _ in envelope.signatures)
    trusted = ", ".join(k.keyid[:16] for k in keys)
    raise BundleError(Reason.BAD_SIGNATURE, f"no valid signature by a trusted key (signed by "
                      f"key {signed_by}, trusted: {trusted}); verify with the signer's .pub key")
