"""Error pages never show a password: not in settings, request.META or traceback variables."""

import sys

import pytest
from django.test import Client, RequestFactory
from django.urls import path
from django.views.debug import technical_500_response

DB_PASSWORD = "db-pa55word-3b1f"
REDIS_PASSWORD = "redis-pa55word-9c2e"
API_KEY = "served-api-key-77a1"
DB_URL = f"postgresql://medannot:{DB_PASSWORD}@db.internal:5432/medannot"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0"
SECRETS = (DB_PASSWORD, REDIS_PASSWORD, API_KEY)


def _fail_to_connect(request):
    # Locals such as a failing connection leaves them in a traceback.
    conn_params = {"host": "db.internal", "user": "medannot", "password": DB_PASSWORD}
    dsn = DB_URL
    broker = REDIS_URL
    raise ConnectionError(f"cannot reach {conn_params['host']} ({len(dsn) + len(broker)})")


urlpatterns = [path("boom/", _fail_to_connect)]


@pytest.fixture
def secret_settings(settings):
    settings.DEBUG = True
    settings.DATABASE_URL = DB_URL
    settings.REDIS_URL = REDIS_URL
    settings.CELERY_BROKER_URL = REDIS_URL
    settings.MEDANNOT_SERVED_URL = f"https://medannot:{API_KEY}@vllm.internal/v1"
    settings.MEDANNOT_BACKEND_OPTIONS = {"base_url": "https://vllm.internal/v1", "api_key": API_KEY}
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
    settings.ROOT_URLCONF = __name__
    return settings


def test_the_debug_500_page_shows_no_connection_passwords(secret_settings):
    request = RequestFactory().get("/boom/", DATABASE_URL=DB_URL, REDIS_URL=REDIS_URL)
    try:
        _fail_to_connect(request)
    except ConnectionError:
        response = technical_500_response(request, *sys.exc_info())
    body = response.content.decode()
    assert response.status_code == 500 and "ConnectionError" in body
    assert "DATABASE_URL" in body and "CELERY_BROKER_URL" in body  # listed, but starred
    leaked = [secret for secret in SECRETS if secret in body]
    assert not leaked, leaked


def test_a_view_that_raises_with_debug_on_leaks_no_password(secret_settings):
    response = Client(raise_request_exception=False).get("/boom/")
    body = response.content.decode()
    assert response.status_code == 500 and "conn_params" in body  # the debug page
    leaked = [secret for secret in SECRETS if secret in body]
    assert not leaked, leaked


def test_with_debug_off_a_500_shows_no_traceback(secret_settings):
    secret_settings.DEBUG = False
    response = Client(raise_request_exception=False).get("/boom/")
    body = response.content.decode()
    assert response.status_code == 500
    assert "Traceback" not in body and "ConnectionError" not in body
    assert not [secret for secret in SECRETS if secret in body]


def test_a_self_containing_variable_does_not_break_the_debug_page(secret_settings):
    request = RequestFactory().get("/boom/")
    loop = {"name": "loop"}
    loop["self"] = loop
    try:
        raise ValueError(f"{len(loop)} keys")
    except ValueError:
        response = technical_500_response(request, *sys.exc_info())
    assert response.status_code == 500 and "ValueError" in response.content.decode()
