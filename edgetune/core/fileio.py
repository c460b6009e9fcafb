"""Writing files without leaving half-written outputs behind: write to a temp file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from edgetune.errors import OutputError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable"]


def check_writable(path: Path, what: str = "output") -> Path:
    """Fail early, before any work, if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and path.is_dir():
        raise OutputError(f"{what} path {str(path)!r} is a directory; give a file path")
    if not parent.exists():
        raise OutputError(
            f"{what} folder {str(parent)!r} does not exist; create it or choose another path"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} folder {str(parent)!r} is not writable; choose another path")
    return path


@contextlib.contextmanager
def atomic_path(path: Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = check_writable(Path(path), what)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(path: Path, writer: Callable[[Path], object], what: str) -> Path:
    try:
        with atomic_path(path, what) as tmp:
            writer(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from exc
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes, what: str = "output") -> Path:
    return _write(path, lambda tmp: tmp.write_bytes(data), what)


def atomic_write_text(path: Path, text: str, what: str = "output") -> Path:
    return _write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)
