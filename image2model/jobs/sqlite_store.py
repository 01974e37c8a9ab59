"""The embedded job store: one SQLite file (WAL) in the data directory.

Writes in this process wake readers at once. Writes by other processes on the same host
(a separate `huey_consumer`) are noticed through SQLite's `data_version`, which a single
watcher thread checks ten times a second, and only while somebody is waiting.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from image2model.jobs.model import Item, ItemState, Job
from image2model.jobs.store import DELETED_VERSION, JobStore, blend_duration, jsonable, patch_item

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS durations (model TEXT PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, at REAL NOT NULL, images INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, until REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_keys (job_id TEXT PRIMARY KEY, sealed TEXT NOT NULL);
"""

WATCH_INTERVAL = 0.02  # only while someone waits; one cheap PRAGMA query per tick

# Writers in one process queue on a lock instead of meeting in SQLite's busy handler, which
# sleeps 1, 2, 5, 10... ms between tries: 25 workers finishing at once waited up to 100 ms.
_write_locks: dict[Path, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def write_lock_for(path: Path) -> threading.Lock:
    with _write_locks_guard:
        return _write_locks.setdefault(path.resolve(), threading.Lock())


class SqliteJobStore(JobStore):
    def __init__(self, path: Path, retention_seconds: float):
        super().__init__(retention_seconds)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_lock = threading.Lock()
        self._write_lock = write_lock_for(self.path)
        with self._connect() as conn:
            conn.executescript(SCHEMA)
        self.changes.on_first_waiter = self._ensure_watcher

    # --- connections ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _write(self, fn: Any) -> Any:
        """Run fn(conn) inside one write transaction taken up front (no upgrade deadlocks)."""
        conn = self._conn
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return result

    # --- records --------------------------------------------------------------------------
    def create(self, job: Job) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (id, data, version, created_at) VALUES (?, ?, ?, ?)",
                (job.id, json.dumps(jsonable(job.to_dict())), job.version, job.created_at),
            )
            conn.executemany(
                "INSERT INTO items (job_id, idx, state, data) VALUES (?, ?, ?, ?)",
                [(job.id, i.index, str(i.state), json.dumps(jsonable(i.to_dict()))) for i in job.items],
            )

        self._write(insert)
        self.changes.notify(job.id, job.version)

    def _expired(self, created_at: float) -> bool:
        return created_at < time.time() - self.retention_seconds

    def get(self, job_id: str) -> Job | None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT data, version, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or self._expired(row[2]):
                return None
            items = conn.execute("SELECT idx, data FROM items WHERE job_id = ?", (job_id,)).fetchall()
        finally:
            conn.execute("COMMIT")
        job = json.loads(row[0])
        job["version"] = row[1]
        return Job.with_items(job, [self.decoded.item(job_id, str(idx), data) for idx, data in items])

    def item(self, job_id: str, index: int) -> Item | None:
        row = self._conn.execute("SELECT data FROM items WHERE job_id = ? AND idx = ?", (job_id, index)).fetchone()
        return None if row is None else self.decoded.item(job_id, str(index), row[0])

    def version(self, job_id: str) -> int | None:
        row = self._conn.execute("SELECT version, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or self._expired(row[1]):
            return None
        return int(row[0])

    def update_item(
        self,
        job_id: str,
        index: int,
        patch: dict[str, Any],
        *,
        expect_state: Iterable[ItemState] | None = None,
        expect_worker: str | None = None,
        unless_cancelled: bool = False,
    ) -> Item | None:
        def update(conn: sqlite3.Connection) -> tuple[Item, int] | None:
            row = conn.execute("SELECT data FROM items WHERE job_id = ? AND idx = ?", (job_id, index)).fetchone()
            if row is None:
                return None
            if unless_cancelled:
                job = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if job is None or json.loads(job[0]).get("cancel_requested"):
                    return None
            updated = patch_item(json.loads(row[0]), patch, expect_state, expect_worker)
            if updated is None:
                return None
            conn.execute(
                "UPDATE items SET data = ?, state = ? WHERE job_id = ? AND idx = ?",
                (json.dumps(updated), updated["state"], job_id, index),
            )
            version = conn.execute(
                "UPDATE jobs SET version = version + 1 WHERE id = ? RETURNING version", (job_id,)
            ).fetchone()[0]
            return Item.from_dict(updated), version

        result = self._write(update)
        if result is None:
            return None
        item, version = result
        self.changes.notify(job_id, version)
        return item

    def touch(self, job_id: str, index: int, worker: str, now: float) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT data FROM items WHERE job_id = ? AND idx = ?", (job_id, index)).fetchone()
            if row is None:
                return False
            updated = patch_item(json.loads(row[0]), {"heartbeat_at": now}, [ItemState.RUNNING], worker)
            if updated is None:
                return False
            conn.execute(
                "UPDATE items SET data = ? WHERE job_id = ? AND idx = ?", (json.dumps(updated), job_id, index)
            )
            return True

        return bool(self._write(update))

    def request_cancel(self, job_id: str) -> bool:
        def update(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            data = json.loads(row[0])
            data["cancel_requested"] = True
            return conn.execute(
                "UPDATE jobs SET data = ?, version = version + 1 WHERE id = ? RETURNING version",
                (json.dumps(data), job_id),
            ).fetchone()[0]

        version = self._write(update)
        if version is None:
            return False
        self.changes.notify(job_id, version)
        return True

    def cancel_requested(self, job_id: str) -> bool | None:
        row = self._conn.execute("SELECT data, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or self._expired(row[1]):
            return None
        return bool(json.loads(row[0]).get("cancel_requested"))

    def delete(self, job_id: str) -> None:
        def remove(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM items WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM job_keys WHERE job_id = ?", (job_id,))

        self._write(remove)
        self.changes.notify(job_id, DELETED_VERSION)

    # --- housekeeping ---------------------------------------------------------------------
    def running_items(self) -> list[tuple[str, Item]]:
        rows = self._conn.execute("SELECT job_id, data FROM items WHERE state = ?", ("running",)).fetchall()
        return [(job_id, Item.from_dict(json.loads(data))) for job_id, data in rows]

    def queued_items(self) -> list[tuple[str, Item]]:
        rows = self._conn.execute("SELECT job_id, data FROM items WHERE state = ?", ("queued",)).fetchall()
        return [(job_id, Item.from_dict(json.loads(data))) for job_id, data in rows]

    def queued_items_with_share(self) -> list[tuple[str, str, Item]]:
        rows = self._conn.execute(
            "SELECT items.job_id, json_extract(jobs.data, '$.share'), items.data FROM items "
            "JOIN jobs ON jobs.id = items.job_id WHERE items.state = ? AND jobs.created_at >= ?",
            ("queued", time.time() - self.retention_seconds)).fetchall()
        return [(job_id, share or "", Item.from_dict(json.loads(data))) for job_id, share, data in rows]

    def move_turns(self, job_id: str, turns: dict[int, int]) -> list[int]:
        def update(conn: sqlite3.Connection) -> list[int]:
            moved = []
            for index, turn in turns.items():
                row = conn.execute("SELECT data FROM items WHERE job_id = ? AND idx = ? AND state = ?",
                                   (job_id, index, "queued")).fetchone()
                if row is None:
                    continue
                data = json.loads(row[0])
                data["turn"] = turn
                conn.execute("UPDATE items SET data = ? WHERE job_id = ? AND idx = ?",
                             (json.dumps(data), job_id, index))
                moved.append(index)
            return moved

        return self._write(update) if turns else []

    def queued_count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM items WHERE state = ?", ("queued",)).fetchone()[0]

    def mark_alive(self, process: str, now: float, ttl: float, info: dict[str, Any]) -> None:
        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workers WHERE until < ?", (now - 3600,))
            conn.execute("INSERT OR REPLACE INTO workers (id, until, info) VALUES (?, ?, ?)",
                         (process, now + ttl, json.dumps(info)))

        self._write(upsert)

    def alive_processes(self, now: float) -> dict[str, dict[str, Any]]:
        rows = self._conn.execute("SELECT id, info FROM workers WHERE until >= ?", (now,)).fetchall()
        return {process: json.loads(info) for process, info in rows}

    def mark_gone(self, process: str) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (process,)))

    def job_ids_created_before(self, timestamp: float) -> list[str]:
        rows = self._conn.execute("SELECT id FROM jobs WHERE created_at < ?", (timestamp,)).fetchall()
        return [r[0] for r in rows]

    def all_job_ids(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT id FROM jobs").fetchall()]

    def recent_job_ids(self, limit: int) -> list[str]:
        rows = self._conn.execute("SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [r[0] for r in rows]

    def record_duration(self, model: str, seconds: float) -> None:
        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT seconds FROM durations WHERE model = ?", (model,)).fetchone()
            blended = blend_duration(row[0] if row else None, seconds)
            conn.execute("INSERT OR REPLACE INTO durations (model, seconds) VALUES (?, ?)", (model, blended))

        self._write(update)

    def typical_duration(self, model: str) -> float | None:
        row = self._conn.execute("SELECT seconds FROM durations WHERE model = ?", (model,)).fetchone()
        return float(row[0]) if row else None

    def reserve_images(self, count: int, limit: int, window_seconds: float, now: float,
                       holder: str = "") -> bool:
        def reserve(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM reservations WHERE at < ?", (now - window_seconds,))
            used = conn.execute("SELECT COALESCE(SUM(images), 0) FROM reservations").fetchone()[0]
            if used + count > limit:
                return False
            conn.execute("INSERT INTO reservations (id, at, images) VALUES (?, ?, ?)",
                         (holder or uuid.uuid4().hex, now, count))
            return True

        return bool(self._write(reserve))

    def release_images(self, holder: str, count: int) -> None:
        self._write(lambda conn: conn.execute("UPDATE reservations SET images = MAX(0, images - ?) WHERE id = ?",
                                              (count, holder)))

    def images_reserved(self, window_seconds: float, now: float) -> int:
        row = self._conn.execute("SELECT COALESCE(SUM(images), 0) FROM reservations WHERE at >= ?",
                                 (now - window_seconds,)).fetchone()
        return int(row[0])

    def shared_secret(self, candidate: str) -> str:
        self._write(lambda conn: conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES ('server', ?)",
                                              (candidate,)))
        return str(self._conn.execute("SELECT value FROM secrets WHERE name = 'server'").fetchone()[0])

    def put_job_key(self, job_id: str, sealed: str) -> None:
        self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO job_keys (job_id, sealed) VALUES (?, ?)",
                                              (job_id, sealed)))

    def job_key(self, job_id: str) -> str | None:
        row = self._conn.execute("SELECT sealed FROM job_keys WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def drop_job_key(self, job_id: str) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM job_keys WHERE job_id = ?", (job_id,)))

    def ping(self) -> bool:
        try:
            self._conn.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self._closed.set()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- cross-process change watcher ---------------------------------------------------
    def _ensure_watcher(self) -> None:
        with self._watcher_lock:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="i2m-sqlite-watch", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        """Notice commits by other connections and wake the readers of the jobs they touched."""
        conn = self._connect()
        last_data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        known: dict[str, int] = {}
        try:
            while not self._closed.wait(WATCH_INTERVAL):
                watched = self.changes.watched_jobs()
                if not watched:
                    continue
                data_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if data_version == last_data_version and all(j in known for j in watched):
                    continue
                last_data_version = data_version
                marks = ",".join("?" * len(watched))
                rows = conn.execute(f"SELECT id, version FROM jobs WHERE id IN ({marks})", watched).fetchall()
                known = {}
                for job_id, version in rows:
                    known[job_id] = version
                    self.changes.notify(job_id, version)
        finally:
            conn.close()
