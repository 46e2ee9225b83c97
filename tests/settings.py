"""Test settings: the real PostgreSQL and Redis, on a Redis database of their own."""

import os
import tempfile

os.environ.setdefault("REDIS_URL", "redis://localhost:6379/15")
# Debug settings (a development SECRET_KEY); pytest-django still runs views with DEBUG off.
# Set in os.environ, so processes the tests start with medannot.settings inherit it.
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="medannot-test-media-"))

from medannot.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDANNOT_MAX_NEW_TOKENS = int(os.environ.get("MEDANNOT_MAX_NEW_TOKENS", "24"))
MEDANNOT_MODEL_IMAGE_SIZE = 64
LOGGING = {"version": 1, "disable_existing_loggers": False}
