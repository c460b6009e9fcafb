"""The rollout server's state: devices, releases, rollouts, stage members, reports.

SQLAlchemy Core over SQLite (default; WAL journal, full fsync, so a ``kill -9`` loses nothing
that was acknowledged) or PostgreSQL (``postgresql://user@host:port/db``, through psycopg 3).
Every state change is one transaction, so after a crash the rollout is exactly where the last
acknowledged request left it. Writes go through one lock per server process, which keeps SQLite
free of lock-upgrade deadlocks; one server process per database is supported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgetune.errors import ConfigError, MissingExtraError

__all__ = ["Database", "normalize_url"]


def _sa() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        raise MissingExtraError("sqlalchemy", "ota", "the rollout server") from None
    return sqlalchemy


def normalize_url(url: str) -> str:
    """``sqlite:///ota.db`` as is; ``postgresql://`` and ``postgres://`` through psycopg 3."""
    for prefix in ("postgresql+psycopg://", "sqlite:///"):
        if url.startswith(prefix):
            return url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ConfigError(f"database URL {url!r} is not supported; use sqlite:///PATH or "
                      "postgresql://USER@HOST:PORT/DB")


def _schema(sa: Any) -> tuple[Any, dict[str, Any]]:
    meta = sa.MetaData()
    text, num, big = sa.Text, sa.Float, sa.BigInteger
    t = {
        "devices": sa.Table(
            "devices", meta,
            sa.Column("id", sa.String(128), primary_key=True),
            sa.Column("tier", sa.String(64), nullable=False),
            sa.Column("enroll_hash", sa.String(64)),
            sa.Column("token_hash", sa.String(64), unique=True),
            sa.Column("registered_at", num, nullable=False),
            sa.Column("enrolled_at", num),
            sa.Column("last_seen", num),
            sa.Column("version", sa.String(64)),
            sa.Column("sha256", sa.String(64))),
        "releases": sa.Table(
            "releases", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("version", sa.String(64), nullable=False, unique=True),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("size", big, nullable=False),
            sa.Column("tier", sa.String(64), nullable=False),
            sa.Column("manifest", text, nullable=False),
            sa.Column("created_at", num, nullable=False),
            sa.Column("delta_base_id", sa.Integer),
            sa.Column("delta_sha256", sa.String(64)),
            sa.Column("delta_size", big)),
        "rollouts": sa.Table(
            "rollouts", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("release_id", sa.Integer, sa.ForeignKey("releases.id"), nullable=False),
            sa.Column("base_release_id", sa.Integer, sa.ForeignKey("releases.id")),
            sa.Column("stages", text, nullable=False),
            sa.Column("stage", sa.Integer, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("reason", text),
            sa.Column("policy", text, nullable=False),
            sa.Column("created_at", num, nullable=False),
            sa.Column("stage_started_at", num, nullable=False),
            sa.Column("updated_at", num, nullable=False)),
        "members": sa.Table(
            "members", meta,
            sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), primary_key=True),
            sa.Column("stage", sa.Integer, primary_key=True),
            sa.Column("device_id", sa.String(128), sa.ForeignKey("devices.id"), primary_key=True),
            sa.Column("role", sa.String(16), nullable=False)),
        "reports": sa.Table(
            "reports", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.String(128), sa.ForeignKey("devices.id"), nullable=False,
                      index=True),
            sa.Column("rollout_id", sa.Integer, index=True),
            sa.Column("stage", sa.Integer),
            sa.Column("version", sa.String(64)),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("reason", text),
            sa.Column("metrics", text),
            sa.Column("created_at", num, nullable=False)),
        "stage_results": sa.Table(
            "stage_results", meta,
            sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), primary_key=True),
            sa.Column("stage", sa.Integer, primary_key=True),
            sa.Column("decision", text, nullable=False),
            sa.Column("decided_at", num, nullable=False)),
    }
    return meta, t


class Database:
    """An engine, the tables, and a write lock."""

    def __init__(self, url: str) -> None:
        sa = _sa()
        self.url = normalize_url(url)
        self.sa = sa
        self.meta, self.t = _schema(sa)
        self._lock = threading.Lock()
        self.engine = self._engine(sa)
        self.meta.create_all(self.engine)

    def _engine(self, sa: Any) -> Any:
        if not self.url.startswith("sqlite"):
            return sa.create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=8)
        engine = sa.create_engine(self.url, connect_args={"check_same_thread": False,
                                                          "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000",
                           "foreign_keys=ON"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        return engine

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One transaction, committed on success, serialized with the other writers."""
        with self._lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
