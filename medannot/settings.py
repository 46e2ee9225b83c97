"""MedAnnot settings, driven by environment variables.

Development defaults work with no variables set (PostgreSQL and Redis on localhost);
production is the same code with other values. A bad value fails loudly at start.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from annotations.queues import (
    CLAIM_SWEEP_TASK,
    DEFAULT_QUEUE,
    DRAFT_TASK,
    EXPORT_SWEEP_TASK,
    EXPORT_TASK,
    GPU_QUEUE,
    PREVIEW_TASK,
    SWEEP_TASK,
    TMP_SWEEP_TASK,
)

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str | None = None) -> str | None:
    """A string from the environment, or from the file named by NAME_FILE (secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = (envstr(name, default) or "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def envint(name: str, default: str) -> int:
    value = envstr(name, default) or ""
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def database_from_url(url: str, variable: str = "DATABASE_URL") -> dict:
    """Django's DATABASES entry for a postgresql:// URL (psycopg 3)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"{variable} must start with postgresql:// (got scheme {parts.scheme!r})"
        )
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured(f"{variable} names no database (postgresql://host/NAME)")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{variable} has an invalid port") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def redis_url(url: str) -> str:
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(f"REDIS_URL must start with redis:// (got {url!r})")
    return url


# Off unless asked for: `make run` and the tests turn it on; production never sees it.
DEBUG = envbool("DEBUG", "False")
SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = [h.strip() for h in (envstr("ALLOWED_HOSTS", "") or "").split(",") if h.strip()]
if DEBUG:
    ALLOWED_HOSTS += ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in (envstr("CSRF_TRUSTED_ORIGINS", "") or "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "django_htmx",
    "template_partials",
    "annotations",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "medannot.middleware.ContentSecurityPolicyMiddleware",
    "medannot.middleware.SessionIdleMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

if not DEBUG:
    # Serves /static/ under gunicorn: a hospital deployment has no CDN and maybe no nginx.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "medannot.urls"
WSGI_APPLICATION = "medannot.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotations.context_processors.notice",
                "annotations.notice.context",
            ],
        },
    }
]

# Two database roles (README, "Database roles"): the web and the workers connect as the app role
# (DATABASE_URL), which cannot rewrite the audit trail; `manage.py migrate` connects as the owner
# role (MIGRATE_DATABASE_URL, by default DATABASE_URL), which owns the tables.
DATABASE_URL = envstr("DATABASE_URL", "postgresql://postgres@localhost:5432/medannot")
MIGRATE_DATABASE_URL = envstr("MIGRATE_DATABASE_URL", "") or DATABASE_URL
MEDANNOT_DB_APP_ROLE = envstr("MEDANNOT_DB_APP_ROLE", "medannot_app") or ""
MEDANNOT_DB_OWNER_ROLE = envstr("MEDANNOT_DB_OWNER_ROLE", "medannot_owner") or ""
for _variable, _role in [
    ("MEDANNOT_DB_APP_ROLE", MEDANNOT_DB_APP_ROLE),
    ("MEDANNOT_DB_OWNER_ROLE", MEDANNOT_DB_OWNER_ROLE),
]:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", _role):  # written into GRANT statements
        raise ImproperlyConfigured(f"{_variable}={_role!r} is not a plain lower-case role name")


def database_for_command(argv: list[str]) -> dict:
    """The owner's connection for `manage.py migrate`, the app's for everything else.

    Django reads the command from argv[1] as well; call_command("migrate") in a process
    (the test runner creating its database) keeps that process's connection.
    """
    app = database_from_url(DATABASE_URL)
    if argv[1:2] != ["migrate"]:
        return app
    owner = database_from_url(MIGRATE_DATABASE_URL, "MIGRATE_DATABASE_URL")
    if [owner[k] for k in ("NAME", "HOST", "PORT")] != [app[k] for k in ("NAME", "HOST", "PORT")]:
        raise ImproperlyConfigured(
            "MIGRATE_DATABASE_URL and DATABASE_URL must name the same database, host and port "
            "(only the role and its password differ)"
        )
    return owner


DATABASES = {"default": database_for_command(sys.argv)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url(envstr("REDIS_URL", "redis://localhost:6379/0"))
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "medannot",
        # Redis down must not hang a page: fail within a second.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": envint("MEDANNOT_PASSWORD_MIN_LENGTH", "12")},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes checks every login against the failures counted so far, then Django's own.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed logins: this many in a row, for one user name or from one address, lock both out
# for the cooling-off period; a success resets the count.
AXES_FAILURE_LIMIT = envint("MEDANNOT_LOGIN_FAILURE_LIMIT", "5")
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured("MEDANNOT_LOGIN_FAILURE_LIMIT must be at least 1")
MEDANNOT_LOGIN_COOLOFF_MINUTES = envint("MEDANNOT_LOGIN_COOLOFF_MINUTES", "15")
if MEDANNOT_LOGIN_COOLOFF_MINUTES < 1:
    raise ImproperlyConfigured("MEDANNOT_LOGIN_COOLOFF_MINUTES must be at least 1")
AXES_COOLOFF_TIME = timedelta(minutes=MEDANNOT_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "medannot.middleware.login_locked_out"
# The client's address: REMOTE_ADDR, or the header a proxy in front sets (X-Forwarded-For),
# only when named here; a header anyone can send would let an attacker pick the address.
MEDANNOT_CLIENT_IP_HEADER = envstr("MEDANNOT_CLIENT_IP_HEADER", "") or ""
AXES_CLIENT_IP_CALLABLE = "medannot.middleware.client_ip"
# Sessions end after this many minutes without a request; the expiry is pushed back at most
# once a minute (medannot.middleware.SessionIdleMiddleware), not written on every request.
MEDANNOT_SESSION_IDLE_MINUTES = envint("MEDANNOT_SESSION_IDLE_MINUTES", "30")
if MEDANNOT_SESSION_IDLE_MINUTES < 2:
    raise ImproperlyConfigured("MEDANNOT_SESSION_IDLE_MINUTES must be at least 2")
SESSION_COOKIE_AGE = MEDANNOT_SESSION_IDLE_MINUTES * 60
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "project-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = Path(envstr("MEDIA_ROOT", str(BASE_DIR / "var" / "media"))).resolve()

# Uploads stream to disk: slides are gigabytes.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Django's own upload temp files go where the sweep finds what an interrupted upload left
# (created at startup by the annotations app).
FILE_UPLOAD_TEMP_DIR = str(MEDIA_ROOT / "tmp")
# Temporary upload files older than this are deleted by the hourly sweep.
MEDANNOT_TMP_MAX_AGE_SECONDS = envint("MEDANNOT_TMP_MAX_AGE_SECONDS", str(24 * 3600))
# Our handler counts the bytes that arrive and skips a file over a limit alone, with a message;
# Django's own file-count check would refuse the whole request first, so it is off.
FILE_UPLOAD_HANDLERS = ["annotations.uploads.LimitedUploadHandler"]
DATA_UPLOAD_MAX_NUMBER_FILES = None
MEDANNOT_MAX_UPLOAD_FILES = envint("MEDANNOT_MAX_UPLOAD_FILES", "500")
MEDANNOT_MAX_FILE_BYTES = envint("MEDANNOT_MAX_FILE_BYTES", str(20 * 1024**3))
MEDANNOT_MAX_UPLOAD_BYTES = envint("MEDANNOT_MAX_UPLOAD_BYTES", str(40 * 1024**3))
# A zip (a MIRAX slide, a DICOM series) is refused before unpacking when it holds more
# entries, or declares more uncompressed bytes, than this: zip bombs write nothing.
MEDANNOT_MAX_ZIP_ENTRIES = envint("MEDANNOT_MAX_ZIP_ENTRIES", "10000")
MEDANNOT_MAX_ZIP_BYTES = envint("MEDANNOT_MAX_ZIP_BYTES", str(MEDANNOT_MAX_UPLOAD_BYTES))
# REST API (annotations.api): requests per token per minute, past which it answers 429.
MEDANNOT_API_RATE_PER_MINUTE = envint("MEDANNOT_API_RATE_PER_MINUTE", "120")
# Resumable (tus) uploads: a file not finished within this many hours may be swept.
MEDANNOT_UPLOAD_EXPIRY_HOURS = envint("MEDANNOT_UPLOAD_EXPIRY_HOURS", "24")
# The size of each piece the upload page sends: a dropped connection loses at most one.
MEDANNOT_UPLOAD_CHUNK_BYTES = envint("MEDANNOT_UPLOAD_CHUNK_BYTES", str(8 * 1024**2))
# The upload page hashes each file (SHA-256, checked by the server) in slices of this size.
MEDANNOT_UPLOAD_HASH_SLICE_BYTES = envint("MEDANNOT_UPLOAD_HASH_SLICE_BYTES", str(8 * 1024**2))

# The slide viewer (Deep Zoom). Tiles are JPEG at this quality; the token in tile URLs lives
# this long; each web process keeps this many slides open, sharing an OpenSlide cache of
# this many bytes; rendered tiles are kept on disk (MEDIA_ROOT/tiles) up to this many bytes.
MEDANNOT_TILE_QUALITY = envint("MEDANNOT_TILE_QUALITY", "80")
if not 1 <= MEDANNOT_TILE_QUALITY <= 95:
    raise ImproperlyConfigured("MEDANNOT_TILE_QUALITY must be between 1 and 95")
MEDANNOT_TILE_TOKEN_SECONDS = envint("MEDANNOT_TILE_TOKEN_SECONDS", str(12 * 3600))
MEDANNOT_SLIDE_CACHE_HANDLES = max(1, envint("MEDANNOT_SLIDE_CACHE_HANDLES", "16"))
MEDANNOT_SLIDE_CACHE_BYTES = envint("MEDANNOT_SLIDE_CACHE_BYTES", str(256 * 1024**2))
MEDANNOT_TILE_CACHE_BYTES = envint("MEDANNOT_TILE_CACHE_BYTES", str(2 * 1024**3))
# The review queue: a reviewer's claim on a task lasts this long unless their open page
# renews it (every minute), so an abandoned task returns to the pool.
MEDANNOT_CLAIM_SECONDS = envint("MEDANNOT_CLAIM_SECONDS", "900")
if MEDANNOT_CLAIM_SECONDS < 120:
    raise ImproperlyConfigured("MEDANNOT_CLAIM_SECONDS must be at least 120 (renewed every 60)")
# Claims expired for longer than this are deleted by the hourly sweep. Until then a page
# that comes back (a laptop woken) can still renew its claim, if nobody took the task over.
MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS = envint("MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS", "3600")
if MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS < 0:
    raise ImproperlyConfigured("MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS must not be negative")
# Export files written by a worker (MEDIA_ROOT/exports) are deleted this many days after.
MEDANNOT_EXPORT_DAYS = envint("MEDANNOT_EXPORT_DAYS", "7")
if MEDANNOT_EXPORT_DAYS < 1:
    raise ImproperlyConfigured("MEDANNOT_EXPORT_DAYS must be at least 1")

# E-mail (member invitations): printed to the console in development; production names an
# SMTP server. EMAIL_BACKEND may be any Django backend's dotted path.
EMAIL_BACKEND = envstr(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", "25")
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "False")
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", "False")
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on")
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", "10")  # a mail server down must not hang a page
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "MedAnnot <medannot@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# HTTPS: on by default with DEBUG off (redirect, one year of HSTS). A TLS-terminating proxy
# in front that does both may turn them off; MEDANNOT_BEHIND_TLS_PROXY makes the redirect
# trust its X-Forwarded-Proto, or every request would be redirected again.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", str(not DEBUG))
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0" if DEBUG else str(365 * 24 * 3600))
# Subdomains of MedAnnot's own host name only: harmless, and asked for by check --deploy.
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "True")
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "False")
if not SECURE_HSTS_PRELOAD:
    # The preload list takes whole registered domains; a hospital's is not ours to submit.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
if envbool("MEDANNOT_BEHIND_TLS_PROXY", "False"):
    # Only behind a proxy that sets this header itself, overwriting any a client sent.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Error pages, the debug one included, never show connection URLs and their passwords.
DEFAULT_EXCEPTION_REPORTER_FILTER = "medannot.debug.SecretsHiddenFilter"

# Drafting. MEDANNOT_MODEL is a hub id (google/medgemma-1.5-4b-it) or a local folder;
# the default is the offline demo model that `make run` builds.
MEDANNOT_MODEL = envstr("MEDANNOT_MODEL", str(BASE_DIR / "var" / "demo-model"))
BACKENDS = {
    "transformers": "inference.backends.transformers.TransformersBackend",
    "served": "inference.backends.served.ServedBackend",  # OpenAI-compatible (vLLM) server
}
MEDANNOT_BACKEND = envstr("MEDANNOT_BACKEND", "transformers")
MEDANNOT_BACKEND = BACKENDS.get(MEDANNOT_BACKEND, MEDANNOT_BACKEND)
MEDANNOT_SERVED_URL = envstr("MEDANNOT_SERVED_URL", "")
if MEDANNOT_BACKEND == BACKENDS["served"] and not MEDANNOT_SERVED_URL:
    raise ImproperlyConfigured("MEDANNOT_BACKEND=served needs MEDANNOT_SERVED_URL (http://host/v1)")
MEDANNOT_BACKEND_OPTIONS = {
    "served": {
        "base_url": MEDANNOT_SERVED_URL,
        "api_key": envstr("MEDANNOT_SERVED_API_KEY", "") or "",
        "concurrency": envint("MEDANNOT_SERVED_CONCURRENCY", "8"),
        "timeout": float(envint("MEDANNOT_SERVED_TIMEOUT", "300")),
    },
}.get("served" if MEDANNOT_BACKEND == BACKENDS["served"] else "", {})
MEDANNOT_DEVICE = envstr("MEDANNOT_DEVICE", "") or None  # "cuda", "cpu", or auto
if MEDANNOT_DEVICE not in {None, "cpu", "cuda"} and not MEDANNOT_DEVICE.startswith("cuda:"):
    raise ImproperlyConfigured(f"MEDANNOT_DEVICE={MEDANNOT_DEVICE!r}: use cpu, cuda or cuda:N")
MEDANNOT_MAX_NEW_TOKENS = envint("MEDANNOT_MAX_NEW_TOKENS", "512")
MEDANNOT_MODEL_IMAGE_SIZE = envint("MEDANNOT_MODEL_IMAGE_SIZE", "896")
MEDANNOT_BATCH_SIZE = envint("MEDANNOT_BATCH_SIZE", "8")
# Threads reading images and cutting slide patches for the next batch.
MEDANNOT_PREPARE_THREADS = max(1, envint("MEDANNOT_PREPARE_THREADS", "4"))
if MEDANNOT_BATCH_SIZE < 1:
    raise ImproperlyConfigured("MEDANNOT_BATCH_SIZE must be at least 1")

# Celery: Redis broker; drafting runs on the `gpu` queue.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    DRAFT_TASK: {"queue": GPU_QUEUE},
    SWEEP_TASK: {"queue": DEFAULT_QUEUE},
    TMP_SWEEP_TASK: {"queue": DEFAULT_QUEUE},
    CLAIM_SWEEP_TASK: {"queue": DEFAULT_QUEUE},
    PREVIEW_TASK: {"queue": DEFAULT_QUEUE},
    EXPORT_TASK: {"queue": DEFAULT_QUEUE},
    EXPORT_SWEEP_TASK: {"queue": DEFAULT_QUEUE},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Applied by the worker from its own settings: the web sends messages without limits.
CELERY_TASK_TIME_LIMIT = envint("MEDANNOT_TASK_TIME_LIMIT", "1800")
if CELERY_TASK_TIME_LIMIT < 2:
    raise ImproperlyConfigured("MEDANNOT_TASK_TIME_LIMIT must be at least 2 (seconds)")
# The soft limit lets a drafting loop give back its batch before the hard kill.
CELERY_TASK_SOFT_TIME_LIMIT = (
    CELERY_TASK_TIME_LIMIT - 60 if CELERY_TASK_TIME_LIMIT > 120 else CELERY_TASK_TIME_LIMIT // 2
)
# A drafting loop stops claiming new batches after this long, inside the time limit.
MEDANNOT_LOOP_SECONDS = envint("MEDANNOT_LOOP_SECONDS", str(CELERY_TASK_TIME_LIMIT // 2))
# A task drafting for longer than this is taken to have lost its worker and is put back.
MEDANNOT_DRAFT_LEASE_SECONDS = envint("MEDANNOT_DRAFT_LEASE_SECONDS", str(CELERY_TASK_TIME_LIMIT))
# Longer than the longest task, or Redis redelivers a task still being drafted.
# Socket timeouts: with the broker down, sending fails fast and the task waits in the outbox.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT + 600,
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-drafts": {"task": SWEEP_TASK, "schedule": 60.0},
    "sweep-upload-tmp": {"task": TMP_SWEEP_TASK, "schedule": 3600.0},
    "sweep-expired-claims": {"task": CLAIM_SWEEP_TASK, "schedule": 3600.0},
    "sweep-expired-exports": {"task": EXPORT_SWEEP_TASK, "schedule": 3600.0},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
}
