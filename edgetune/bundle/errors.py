"""The one error a bundle, a delta or an update can fail with, and the reason it carries.

Every refusal (a changed byte, a wrong key, an expired or older bundle, a path that escapes the
bundle, a truncated file) is a :class:`BundleError` whose ``reason`` says which one, so a device
can report it and a test can check it without parsing text.
"""

from __future__ import annotations

from enum import Enum

from edgetune.errors import ModelError

__all__ = ["BundleError", "Reason"]


class Reason(str, Enum):
    """Why a bundle or delta was refused."""

    MALFORMED = "malformed"
    """Not a readable archive, manifest, envelope or delta."""
    UNSAFE_PATH = "unsafe-path"
    """An entry that would land outside the bundle: absolute, '..', link, device, duplicate."""
    TRUNCATED = "truncated"
    """The archive ends before every file the manifest lists."""
    TAMPERED = "tampered"
    """A file's size or SHA-256 differs from the signed manifest."""
    BAD_SIGNATURE = "bad-signature"
    """No signature by a trusted key."""
    EXPIRED = "expired"
    """Past the manifest's expiry time, or created in the future."""
    ROLLBACK = "rollback"
    """Older than the installed or minimum version."""
    INCOMPATIBLE = "incompatible"
    """Made for another device tier or a newer runtime."""
    TOO_LARGE = "too-large"
    """An entry or the whole archive is over the reader's limits."""
    WRONG_BASE = "wrong-base"
    """A delta made for another base bundle."""


class BundleError(ModelError):
    """A bundle or delta was refused; ``reason`` says why, the message says what to do."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
