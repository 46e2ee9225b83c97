"""Is everything a draft needs up? Database, Redis, and a worker on the `gpu` queue."""

from __future__ import annotations

import logging

from celery import current_app
from django.core.cache import cache
from django.db import connection

from annotations.queues import GPU_QUEUE

log = logging.getLogger(__name__)

_WORKERS_KEY = "health:gpu-workers"


def database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        log.warning("database health check failed", exc_info=True)
        return False


def redis_ok() -> bool:
    """A ping with the cache's short socket timeouts: answers within about a second."""
    try:
        return bool(cache._cache.get_client().ping())
    except Exception:
        log.warning("redis health check failed", exc_info=True)
        return False


def gpu_workers(*, fresh: bool = False) -> list[str]:
    """Names of the workers consuming the gpu queue; cached briefly (asking takes a second).

    Empty when Redis is down: Celery is never asked then (it would wait on the broker).
    """
    if not fresh:
        try:
            cached = cache.get(_WORKERS_KEY)
        except Exception:
            cached = None
        if cached is not None:
            return cached
    if not redis_ok():
        return []
    try:
        replies = current_app.control.inspect(timeout=1.0).active_queues() or {}
    except Exception:
        log.warning("could not ask Celery for its workers", exc_info=True)
        return []
    workers = sorted(
        name for name, queues in replies.items() if any(q.get("name") == GPU_QUEUE for q in queues)
    )
    try:
        cache.set(_WORKERS_KEY, workers, timeout=15 if workers else 5)
    except Exception:
        pass
    return workers


def status() -> dict:
    db, redis = database_ok(), redis_ok()
    workers = gpu_workers() if redis else []
    return {
        "ok": db and redis and bool(workers),
        "database": "ok" if db else "down",
        "redis": "ok" if redis else "down",
        "gpu_workers": len(workers),
        "gpu_queue": "consumed" if workers else "no worker",
    }
