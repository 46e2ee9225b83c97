"""GET /healthz: database, Redis, and whether a worker consumes the gpu queue."""

from django.core.cache import cache

from annotations import health


def test_it_reports_database_redis_and_no_worker(client, db):
    cache.delete(health._WORKERS_KEY)
    response = client.get("/healthz")
    assert response.status_code == 200
    data = response.json()
    assert data["database"] == "ok" and data["redis"] == "ok"
    assert data["gpu_workers"] == 0 and data["gpu_queue"] == "no worker"
    assert data["ok"] is False


def test_it_counts_a_gpu_worker(client, db):
    cache.set(health._WORKERS_KEY, ["gpu@node1"])
    data = client.get("/healthz").json()
    assert data["gpu_workers"] == 1 and data["ok"] is True


def test_it_says_when_redis_is_down(client, db, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    from django.core.cache import caches

    caches._settings = None
    try:
        data = client.get("/healthz").json()
    finally:
        caches._settings = None
    assert data["redis"] == "down" and data["ok"] is False


def test_a_worker_consuming_gpu_is_seen(celery_worker, db):
    assert celery_worker.hostname in health.gpu_workers(fresh=True)
