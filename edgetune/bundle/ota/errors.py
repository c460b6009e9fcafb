"""Errors of the rollout server and its clients, each with the HTTP status it maps to."""

from __future__ import annotations

from edgetune.errors import EdgetuneError

__all__ = ["Conflict", "Forbidden", "NotFound", "OtaError", "Unauthorized", "Unavailable"]


class OtaError(EdgetuneError):
    """A request the rollout server refused, or could not be asked."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class Unauthorized(OtaError):
    """No credential, or one the server does not know."""

    status = 401


class Forbidden(OtaError):
    """A known credential asking for something it may not do."""

    status = 403


class NotFound(OtaError):
    status = 404


class Conflict(OtaError):
    """The request clashes with the server's state (a running rollout, an enrolled device)."""

    status = 409


class Unavailable(OtaError):
    """The server could not be reached, or the connection broke."""

    status = 503
