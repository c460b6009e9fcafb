"""Where the server keeps bundles and deltas: files named by their SHA-256, and nothing else.

A file is only ever looked up by a digest the database holds, checked to be 64 hex digits and
resolved inside the store; no request path reaches the file system. Uploads stream into a
temporary file in the store and are renamed to their digest once complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from edgetune.errors import ConfigError, OutputError

__all__ = ["BlobStore", "UploadTooLarge"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("etb", "etd")


class UploadTooLarge(OutputError):
    """An upload went over the store's size limit."""


class BlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "incoming").mkdir(exist_ok=True)

    def path(self, digest: str, kind: str) -> Path:
        """The file for ``digest``; refuses anything that is not a digest inside the store."""
        if not isinstance(digest, str) or not _DIGEST.match(digest) or kind not in _KINDS:
            raise ConfigError(f"blob name {str(digest)[:80]!r}.{kind} is not a SHA-256 digest")
        path = (self.root / "blobs" / f"{digest}.{kind}").resolve()
        if not path.is_relative_to(self.root / "blobs"):
            raise ConfigError(f"blob {digest!r} resolves outside the store")
        return path

    def temp_path(self) -> Path:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.root / "incoming")
        os.close(fd)
        return Path(name)

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> Path:
        """Stream an upload to a temporary file, refusing it past ``limit`` bytes."""
        tmp = self.temp_path()
        size = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(f"upload is over the limit of {limit} bytes; raise "
                                             "--max-upload-mb on the server")
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def adopt(self, tmp: Path, kind: str) -> tuple[str, int]:
        """Move a finished temporary file to its digest name; returns (digest, size)."""
        digest = hashlib.sha256()
        with tmp.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        size = tmp.stat().st_size
        target = self.path(digest.hexdigest(), kind)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return digest.hexdigest(), size
