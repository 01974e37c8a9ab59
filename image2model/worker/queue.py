"""The huey queue: SQLite in the data directory by default, Redis when REDIS_URL is set."""

from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey

from image2model.config import Settings

QUEUE_NAME = "image2model"


def make_huey(settings: Settings) -> Huey:
    if settings.use_redis:
        return RedisHuey(QUEUE_NAME, url=settings.redis_url, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(settings.data_dir / "queue.db"), utc=True)
