"""Credentials: one operator token for the server, and one token per enrolled device.

Only SHA-256 digests of secrets are stored; comparisons are constant-time. A device is
registered by the operator (who receives a one-time enrollment code for it), enrolls once with
that code, and from then on proves who it is with the token enrollment returned. The token is
the device's identity: a request can never name another device than its token's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from edgetune.errors import ConfigError

__all__ = ["digest", "load_or_create_token", "matches", "new_secret"]


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str | None) -> bool:
    return stored_digest is not None and hmac.compare_digest(digest(secret), stored_digest)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def load_or_create_token(path: Path | str, prefix: str = "op") -> str:
    """Read a token file, or create one readable by its owner only."""
    path = Path(path)
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ConfigError(f"token file {str(path)!r} holds a token shorter than 16 "
                              "characters; delete it to have a new one made")
        return token
    token = new_secret(prefix)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def read_token(path: Path | str, what: str = "operator token") -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror}; pass "
                          "--token-file with the file the server wrote") from None
    if not token or len(token) > 512 or not token.isprintable() or " " in token:
        raise ConfigError(f"{what} file {str(path)!r} does not hold a single-line token; pass "
                          "the token file the server wrote")
    return token
