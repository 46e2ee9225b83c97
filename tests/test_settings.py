"""Settings come from the environment and fail loudly on a bad value."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from medannot.settings import database_from_url


def test_it_parses_a_database_url():
    db = database_from_url("postgresql://med:s%40cret@db.example:6543/annot")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "med",
        "s@cret",
        "db.example",
        "6543",
        "annot",
    )


ROOT = Path(__file__).resolve().parent.parent


def _start(**env):
    code = "import django; django.setup()"
    full = os.environ | {"DJANGO_SETTINGS_MODULE": "medannot.settings", "DEBUG": "true"} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def _production_env(**env) -> dict[str, str]:
    """The environment with DEBUG unset: production, as the Dockerfile and compose run it."""
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    return base | {"DJANGO_SETTINGS_MODULE": "medannot.settings"} | env


def test_debug_is_off_unless_asked_for():
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    run = [sys.executable, "-c", code]
    no_key = subprocess.run(run, env=_production_env(), capture_output=True, text=True)
    assert no_key.returncode != 0 and "SECRET_KEY must be set" in no_key.stderr
    env = _production_env(SECRET_KEY=secrets.token_urlsafe(50))
    out = subprocess.run(run, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


HTTPS_BY_THE_PROXY = {"security.W004", "security.W008"}  # HSTS, SSL redirect: the proxy's job


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, HTTPS_BY_THE_PROXY),
        ({"MEDANNOT_BEHIND_TLS_PROXY": "true"}, HTTPS_BY_THE_PROXY),
        (
            {
                "SECURE_SSL_REDIRECT": "true",
                "SECURE_HSTS_SECONDS": "31536000",
                "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
                "SECURE_HSTS_PRELOAD": "true",
            },
            set(),
        ),
    ],
    ids=["plain", "behind-a-tls-proxy", "https-by-django"],
)
def test_production_settings_pass_check_deploy(env, allowed):
    full = _production_env(SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="example.org", **env)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    found = set(re.findall(r"\((\w+\.[A-Z]\d+)\)", output))
    assert found <= allowed, output
    assert result.returncode == (1 if found else 0), output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x@localhost/db"}, "DATABASE_URL must start with postgresql://"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL must start with redis://"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"MEDANNOT_DEVICE": "tpu"}, "MEDANNOT_DEVICE='tpu'"),
        ({"MEDANNOT_MAX_NEW_TOKENS": "lots"}, "is not an integer"),
        ({"MEDANNOT_EXPORT_DAYS": "0"}, "MEDANNOT_EXPORT_DAYS must be at least 1"),
    ],
)
def test_a_bad_value_fails_loudly_at_start(env, message):
    result = _start(**env)
    assert result.returncode != 0
    assert message in result.stderr


def test_secrets_can_come_from_files(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    code = (
        "import django; django.setup();from django.conf import settings; print(settings.SECRET_KEY)"
    )
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "medannot.settings",
        "SECRET_KEY_FILE": str(secret),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "from-a-file"


def test_the_web_process_never_imports_torch():
    code = (
        "import django, sys; django.setup();"
        "import medannot.urls, annotations.views, inference.tasks;"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = os.environ | {"DJANGO_SETTINGS_MODULE": "medannot.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr
