"""Progress reporting without printing: the library calls a sink, the CLI draws a bar."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NULL_PROGRESS", "Progress"]


class Progress(Protocol):
    def start(self, label: str, total: int | None = None) -> None:
        """Begin a step; ``total`` units of work when known."""
        ...

    def advance(self, units: int = 1) -> None: ...

    def finish(self) -> None:
        """End the current step."""
        ...


class _NullProgress:
    def start(self, label: str, total: int | None = None) -> None:
        return None

    def advance(self, units: int = 1) -> None:
        return None

    def finish(self) -> None:
        return None


NULL_PROGRESS: Progress = _NullProgress()
