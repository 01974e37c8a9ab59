"""The distributed job store: Redis hashes, with pub/sub for change events.

Keys (all under `i2m:`): `job:<id>` (meta JSON + version), `items:<id>` (index -> item JSON),
`running` and `queued` (sets of "<id>|<index>" for the reaper), `created` (a sorted set for
cleanup), `workers` (a sorted set of live worker processes by expiry), `durations`,
`reservations`, `secret` (the server secret when SECRET_KEY is unset), `fal-key:<id>` (a
user's sealed FAL key, until the job ends). Every client has socket timeouts, and a Redis that is down or hanging
surfaces as `StoreUnavailable`. Item updates run as one Lua script, so the compare-and-set,
the version bump and the change event are a single atomic step.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from image2model.jobs.model import Item, ItemState, Job
from image2model.outage import OutageLog
from image2model.jobs.store import DELETED_VERSION, JobStore, StoreUnavailable, blend_duration, jsonable

log = logging.getLogger(__name__)
listener_outage = OutageLog(log, "change events (Redis)")

PREFIX = "i2m:"
CHANNEL = PREFIX + "changes"
RUNNING = PREFIX + "running"
QUEUED = PREFIX + "queued"
WORKERS = PREFIX + "workers"
WORKER_INFO = PREFIX + "worker-info"
SECRET = PREFIX + "secret"

# A Redis that hangs must not hang a request or a worker: every call gives up after this.
SOCKET_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 3.0
PROBE_TIMEOUT_SECONDS = 1.0
OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def redis_client(url: str, timeout: float = SOCKET_TIMEOUT_SECONDS, **options: Any) -> redis.Redis:
    """The one way this app connects to Redis: bounded waits everywhere."""
    return redis.Redis.from_url(url, socket_timeout=timeout,
                                socket_connect_timeout=min(timeout, CONNECT_TIMEOUT_SECONDS),
                                health_check_interval=30, **options)


def _outages_as_unavailable(cls: type) -> type:
    """Every public method of the store turns a Redis outage into StoreUnavailable."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not callable(method) or name in ("close", "ping"):
            continue

        def wrapped(self, *args, __method=method, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            try:
                return __method(self, *args, **kwargs)
            except OUTAGE_ERRORS as exc:
                raise StoreUnavailable(f"Redis is not reachable: {exc}") from exc

        wrapped.__name__, wrapped.__doc__ = method.__name__, method.__doc__
        setattr(cls, name, wrapped)
    return cls

UPDATE_ITEM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local item = cjson.decode(raw)
if ARGV[3] ~= '' then
  local ok = false
  for _, s in ipairs(cjson.decode(ARGV[3])) do
    if item.state == s then ok = true end
  end
  if not ok then return false end
end
if ARGV[4] ~= '' and item.worker ~= ARGV[4] then return false end
if ARGV[8] == '1' then
  local meta = redis.call('HGET', KEYS[2], 'meta')
  if not meta or cjson.decode(meta).cancel_requested then return false end
end
for k, v in pairs(cjson.decode(ARGV[2])) do item[k] = v end
local out = cjson.encode(item)
redis.call('HSET', KEYS[1], ARGV[1], out)
local member = ARGV[5] .. '|' .. ARGV[1]
if item.state == 'running' then
  redis.call('SADD', KEYS[3], member)
else
  redis.call('SREM', KEYS[3], member)
end
if item.state == 'queued' then
  redis.call('SADD', KEYS[4], member)
else
  redis.call('SREM', KEYS[4], member)
end
if ARGV[6] == '1' then
  local v = redis.call('HINCRBY', KEYS[2], 'version', 1)
  redis.call('PUBLISH', ARGV[7], ARGV[5] .. ' ' .. v)
end
return out
"""

MOVE_TURNS = """
local moved = {}
for index, turn in pairs(cjson.decode(ARGV[1])) do
  local raw = redis.call('HGET', KEYS[1], index)
  if raw then
    local item = cjson.decode(raw)
    if item.state == 'queued' then
      item.turn = turn
      redis.call('HSET', KEYS[1], index, cjson.encode(item))
      table.insert(moved, index)
    end
  end
end
return cjson.encode(moved)
"""

# A reservation is the member "<holder>:<images>" scored by its time; giving images back
# rewrites the member in place (same score), dropping it at zero.
RELEASE = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local holder, images = string.match(member, '^(.*):(%d+)$')
  if holder == ARGV[1] then
    local score = redis.call('ZSCORE', KEYS[1], member)
    redis.call('ZREM', KEYS[1], member)
    local left = tonumber(images) - tonumber(ARGV[2])
    if left > 0 then redis.call('ZADD', KEYS[1], score, holder .. ':' .. left) end
    return 1
  end
end
return 0
"""

RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local used = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + tonumber(string.match(member, ':(%d+)$'))
end
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5] .. ':' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""


@_outages_as_unavailable
class RedisJobStore(JobStore):
    def __init__(self, url: str, retention_seconds: float):
        super().__init__(retention_seconds)
        self.url = url
        self.redis = redis_client(url, decode_responses=True)
        # readiness asks with a short fuse, so /ready turns 503 within seconds of a hang
        self._probe = redis_client(url, PROBE_TIMEOUT_SECONDS, decode_responses=True)
        self._update_item = self.redis.register_script(UPDATE_ITEM)
        self._reserve = self.redis.register_script(RESERVE)
        self._release = self.redis.register_script(RELEASE)
        self._move_turns = self.redis.register_script(MOVE_TURNS)
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self.changes.on_first_waiter = self._ensure_listener

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    @staticmethod
    def _items_key(job_id: str) -> str:
        return f"{PREFIX}items:{job_id}"

    @property
    def _ttl(self) -> int:
        return max(1, int(self.retention_seconds))

    # --- records --------------------------------------------------------------------------
    def create(self, job: Job) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._job_key(job.id), mapping={"meta": json.dumps(jsonable(job.to_dict())), "version": job.version})
        pipe.hset(
            self._items_key(job.id),
            mapping={str(i.index): json.dumps(jsonable(i.to_dict())) for i in job.items},
        )
        pipe.expire(self._job_key(job.id), self._ttl)
        pipe.expire(self._items_key(job.id), self._ttl)
        pipe.zadd(PREFIX + "created", {job.id: job.created_at})
        queued = [f"{job.id}|{i.index}" for i in job.items if i.state == ItemState.QUEUED]
        if queued:
            pipe.sadd(QUEUED, *queued)
        pipe.publish(CHANNEL, f"{job.id} {job.version}")
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self._job_key(job_id))
        pipe.hgetall(self._items_key(job_id))
        meta, items = pipe.execute()
        if not meta or not items:
            return None
        job = json.loads(meta["meta"])
        job["version"] = int(meta["version"])
        return Job.with_items(job, [self.decoded.item(job_id, key, raw) for key, raw in items.items()])

    def item(self, job_id: str, index: int) -> Item | None:
        raw = self.redis.hget(self._items_key(job_id), str(index))
        return None if raw is None else self.decoded.item(job_id, str(index), raw)

    def version(self, job_id: str) -> int | None:
        value = self.redis.hget(self._job_key(job_id), "version")
        return int(value) if value is not None else None

    def _run_update(
        self,
        job_id: str,
        index: int,
        patch: dict[str, Any],
        expect_state: Iterable[ItemState] | None,
        expect_worker: str | None,
        bump: bool,
        unless_cancelled: bool = False,
    ) -> str | None:
        states = json.dumps([str(s) for s in expect_state]) if expect_state is not None else ""
        return self._update_item(
            keys=[self._items_key(job_id), self._job_key(job_id), RUNNING, QUEUED],
            args=[str(index), json.dumps(jsonable(patch)), states, expect_worker or "", job_id,
                  "1" if bump else "0", CHANNEL, "1" if unless_cancelled else "0"],
        )

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
        raw = self._run_update(job_id, index, patch, expect_state, expect_worker, bump=True,
                               unless_cancelled=unless_cancelled)
        return Item.from_dict(json.loads(raw)) if raw else None

    def touch(self, job_id: str, index: int, worker: str, now: float) -> bool:
        raw = self._run_update(job_id, index, {"heartbeat_at": now}, [ItemState.RUNNING], worker, bump=False)
        return raw is not None

    def request_cancel(self, job_id: str) -> bool:
        key = self._job_key(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, "meta")
                    if raw is None:
                        pipe.unwatch()
                        return False
                    meta = json.loads(raw)
                    meta["cancel_requested"] = True
                    pipe.multi()
                    pipe.hset(key, "meta", json.dumps(meta))
                    pipe.hincrby(key, "version", 1)
                    _, version = pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.redis.publish(CHANNEL, f"{job_id} {version}")
        return True

    def cancel_requested(self, job_id: str) -> bool | None:
        raw = self.redis.hget(self._job_key(job_id), "meta")
        return None if raw is None else bool(json.loads(raw).get("cancel_requested"))

    def delete(self, job_id: str) -> None:
        items = self.redis.hkeys(self._items_key(job_id))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._job_key(job_id), self._items_key(job_id), self._fal_key_key(job_id))
        pipe.zrem(PREFIX + "created", job_id)
        if items:
            members = [f"{job_id}|{i}" for i in items]
            pipe.srem(RUNNING, *members)
            pipe.srem(QUEUED, *members)
        pipe.publish(CHANNEL, f"{job_id} {DELETED_VERSION}")
        pipe.execute()

    # --- housekeeping ---------------------------------------------------------------------
    def running_items(self) -> list[tuple[str, Item]]:
        return self._items_in(RUNNING, ItemState.RUNNING)

    def queued_items(self) -> list[tuple[str, Item]]:
        return self._items_in(QUEUED, ItemState.QUEUED)

    def queued_items_with_share(self) -> list[tuple[str, str, Item]]:
        by_job: dict[str, list[str]] = {}
        for member in self.redis.smembers(QUEUED):
            job_id, index = member.rsplit("|", 1)
            by_job.setdefault(job_id, []).append(index)
        pipe = self.redis.pipeline(transaction=False)
        for job_id, indices in by_job.items():
            pipe.hget(self._job_key(job_id), "meta")
            pipe.hmget(self._items_key(job_id), indices)
        replies = pipe.execute()
        found = []
        for (job_id, indices), meta, raws in zip(by_job.items(), replies[::2], replies[1::2]):
            if meta is None:
                continue  # expired: queued_items drops its members
            share = json.loads(meta).get("share") or ""
            for key, raw in zip(indices, raws):
                if raw is not None and (item := self.decoded.item(job_id, key, raw)).state == ItemState.QUEUED:
                    found.append((job_id, share, item))
        return found

    def move_turns(self, job_id: str, turns: dict[int, int]) -> list[int]:
        if not turns:
            return []
        moved = self._move_turns(keys=[self._items_key(job_id)],
                                 args=[json.dumps({str(index): turn for index, turn in turns.items()})])
        return [int(index) for index in json.loads(moved)]

    def queued_count(self) -> int:
        return int(self.redis.scard(QUEUED))  # an expired job's members linger until queued_items drops them

    def _items_in(self, index_key: str, state: ItemState) -> list[tuple[str, Item]]:
        found: list[tuple[str, Item]] = []
        for member in self.redis.smembers(index_key):
            job_id, index = member.rsplit("|", 1)
            raw = self.redis.hget(self._items_key(job_id), index)
            if raw is None:
                self.redis.srem(index_key, member)  # the job expired
                continue
            item = Item.from_dict(json.loads(raw))
            if item.state == state:
                found.append((job_id, item))
        return found

    def mark_alive(self, process: str, now: float, ttl: float, info: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS, {process: now + ttl})
        pipe.hset(WORKER_INFO, process, json.dumps(info))
        pipe.execute()

    def alive_processes(self, now: float) -> dict[str, dict[str, Any]]:
        gone = self.redis.zrangebyscore(WORKERS, "-inf", now - 3600)
        if gone:
            self.redis.zrem(WORKERS, *gone)
            self.redis.hdel(WORKER_INFO, *gone)
        alive = self.redis.zrangebyscore(WORKERS, now, "+inf")
        infos = self.redis.hmget(WORKER_INFO, alive) if alive else []
        return {p: json.loads(i) if i else {} for p, i in zip(alive, infos)}

    def mark_gone(self, process: str) -> None:
        self.redis.zrem(WORKERS, process)
        self.redis.hdel(WORKER_INFO, process)

    def job_ids_created_before(self, timestamp: float) -> list[str]:
        return list(self.redis.zrangebyscore(PREFIX + "created", "-inf", timestamp))

    def all_job_ids(self) -> list[str]:
        return list(self.redis.zrange(PREFIX + "created", 0, -1))

    def recent_job_ids(self, limit: int) -> list[str]:
        return list(self.redis.zrevrange(PREFIX + "created", 0, limit - 1)) if limit > 0 else []

    def record_duration(self, model: str, seconds: float) -> None:
        key = PREFIX + "durations"
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    previous = pipe.hget(key, model)
                    blended = blend_duration(float(previous) if previous else None, seconds)
                    pipe.multi()
                    pipe.hset(key, model, blended)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def typical_duration(self, model: str) -> float | None:
        value = self.redis.hget(PREFIX + "durations", model)
        return float(value) if value is not None else None

    def reserve_images(self, count: int, limit: int, window_seconds: float, now: float,
                       holder: str = "") -> bool:
        allowed = self._reserve(
            keys=[PREFIX + "reservations"],
            args=[now - window_seconds, count, limit, now, holder or uuid.uuid4().hex, int(window_seconds) + 1],
        )
        return bool(allowed)

    def release_images(self, holder: str, count: int) -> None:
        self._release(keys=[PREFIX + "reservations"], args=[holder, count])

    def images_reserved(self, window_seconds: float, now: float) -> int:
        members = self.redis.zrangebyscore(PREFIX + "reservations", now - window_seconds, "+inf")
        return sum(int(m.rsplit(":", 1)[1]) for m in members)

    def shared_secret(self, candidate: str) -> str:
        self.redis.set(SECRET, candidate, nx=True)
        return str(self.redis.get(SECRET))

    @staticmethod
    def _fal_key_key(job_id: str) -> str:
        return f"{PREFIX}fal-key:{job_id}"

    def put_job_key(self, job_id: str, sealed: str) -> None:
        self.redis.set(self._fal_key_key(job_id), sealed, ex=self._ttl)

    def job_key(self, job_id: str) -> str | None:
        value = self.redis.get(self._fal_key_key(job_id))
        return None if value is None else str(value)

    def drop_job_key(self, job_id: str) -> None:
        self.redis.delete(self._fal_key_key(job_id))

    def ping(self) -> bool:
        try:
            return bool(self._probe.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._closed.set()
        self.redis.close()
        self._probe.close()

    # --- change events --------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        with self._listener_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, name="i2m-redis-listen", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        """One subscription per process fans change events out to every local reader."""
        while not self._closed.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                listener_outage.ok()
                # Wake everyone once after (re)subscribing: events may have been missed.
                for job_id in self.changes.watched_jobs():
                    version = self.version(job_id)
                    if version is not None:
                        self.changes.notify(job_id, version)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        job_id, _, version = message["data"].partition(" ")
                        self.changes.notify(job_id, int(version))
            except (redis.RedisError, OSError, ValueError, StoreUnavailable) as exc:
                if self._closed.is_set():
                    return
                listener_outage.failed(exc)
                time.sleep(1.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
