"""The container under bundles and deltas: a plain tar, written deterministically, read strictly.

Writing: entries in the given order, every header fixed (mode 0644, owner 0, time 0), so the
same files always give the same bytes; that is what lets a delta rebuild a bundle byte for byte.

Reading never calls ``extractall``. Each entry is checked before its data is touched: a regular
file only (no links, devices, folders or sparse files), a relative name of plain components
(no '/', '..', '\\', drive letters or control characters), no duplicate names (also ignoring
case, for case-insensitive file systems), sizes under the limits. Data is streamed, so a huge
entry is refused without being read.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgetune.bundle.errors import BundleError, Reason

__all__ = ["Entry", "Limits", "check_name", "iter_entries", "write_archive"]

_COMPONENT = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}$")
CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a reader accepts; anything larger is refused before it is read."""

    max_entries: int = 4096
    max_entry_bytes: int = 8 << 30
    max_total_bytes: int = 16 << 30
    max_depth: int = 8


def check_name(name: str) -> str:
    """A safe relative path, or an UNSAFE_PATH error saying what is wrong with it."""
    if not name or len(name) > 512:
        raise BundleError(Reason.UNSAFE_PATH, f"entry name {name[:80]!r} is empty or too long")
    if name.startswith("/") or "\\" in name or ":" in name:
        raise BundleError(Reason.UNSAFE_PATH, f"entry {name!r} is an absolute or foreign path; "
                          "a bundle holds relative paths only")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(Reason.UNSAFE_PATH, f"entry {name!r} contains an empty, '.' or '..' "
                          "component (path traversal); refusing the bundle")
    bad = next((p for p in parts if not _COMPONENT.match(p)), None)
    if bad is not None:
        raise BundleError(Reason.UNSAFE_PATH, f"entry {name!r} has a component {bad!r} with "
                          "characters outside [A-Za-z0-9._+-]; refusing the bundle")
    return name


def write_archive(out: BinaryIO, entries: list[tuple[str, bytes]]) -> None:
    """Write ``entries`` (name, data) as a deterministic tar to ``out``.

    Written by hand rather than with ``tarfile``'s writer, which pads the archive to 10 KiB
    records: for a delta of a few tensors that padding would be most of the file.
    """
    for name, data in entries:
        info = tarfile.TarInfo(check_name(name))
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
        out.write(data)
        out.write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))


@dataclass(frozen=True)
class Entry:
    """One checked entry: its name, size, data offset in the archive, and a chunk reader."""

    name: str
    size: int
    offset: int
    _tar: tarfile.TarFile
    _info: tarfile.TarInfo

    def chunks(self) -> Iterator[bytes]:
        """The entry's bytes in chunks; a short read is TRUNCATED."""
        handle = self._tar.extractfile(self._info)
        if handle is None:
            raise BundleError(Reason.UNSAFE_PATH, f"entry {self.name!r} is not a regular file")
        left = self.size
        while left:
            try:
                chunk = handle.read(min(CHUNK, left))
            except (tarfile.ReadError, OSError, EOFError) as exc:
                raise BundleError(Reason.TRUNCATED, f"entry {self.name!r} ends early ({exc}); "
                                  "download the file again") from None
            if not chunk:
                raise BundleError(Reason.TRUNCATED, f"entry {self.name!r} ends {left} bytes "
                                  "early; download the file again")
            left -= len(chunk)
            yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())


def iter_entries(path: Path, limits: Limits = Limits()) -> Iterator[Entry]:
    """Yield checked entries of the tar at ``path`` in archive order."""
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.ReadError, EOFError) as exc:
        raise BundleError(Reason.MALFORMED, f"{str(path)!r} is not a bundle archive ({exc}); "
                          "give a file made by edgetune") from None
    except OSError as exc:
        raise BundleError(Reason.MALFORMED, f"cannot open {str(path)!r}: {exc.strerror}") from None
    with tar:
        yield from _checked(tar, limits)


def _checked(tar: tarfile.TarFile, limits: Limits) -> Iterator[Entry]:
    seen: set[str] = set()
    total = 0
    while True:
        info = _next(tar)
        if info is None:
            return
        _check_info(info, limits)
        key = info.name.casefold()
        if key in seen or len(seen) >= limits.max_entries:
            raise BundleError(Reason.UNSAFE_PATH, f"entry {info.name!r} is a duplicate or one "
                              f"entry too many (limit {limits.max_entries}); refusing the bundle")
        seen.add(key)
        total += info.size
        if total > limits.max_total_bytes:
            raise BundleError(Reason.TOO_LARGE, f"archive holds over {limits.max_total_bytes} "
                              "bytes; raise the limit if this is expected")
        yield Entry(info.name, info.size, info.offset_data, tar, info)


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.ReadError, EOFError, UnicodeError, ValueError) as exc:
        raise BundleError(Reason.TRUNCATED if "end of" in str(exc) else Reason.MALFORMED,
                          f"archive header cannot be read ({exc}); download the file again"
                          ) from None


def _check_info(info: tarfile.TarInfo, limits: Limits) -> None:
    if not info.isreg() or info.issparse() or info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise BundleError(Reason.UNSAFE_PATH, f"entry {info.name!r} is a link, folder, device or "
                          "sparse file; a bundle holds regular files only")
    check_name(info.name)
    if info.name.count("/") >= limits.max_depth:
        raise BundleError(Reason.UNSAFE_PATH, f"entry {info.name!r} is nested deeper than "
                          f"{limits.max_depth} folders")
    if info.size > limits.max_entry_bytes:
        raise BundleError(Reason.TOO_LARGE, f"entry {info.name!r} is {info.size} bytes, over the "
                          f"limit of {limits.max_entry_bytes}")
