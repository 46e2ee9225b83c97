"""Settings come from the environment and fail loudly on a bad value."""

import os
import subprocess
import sys

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


def _start(**env):
    code = "import django; django.setup()"
    full = os.environ | {"DJANGO_SETTINGS_MODULE": "medannot.settings"} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x@localhost/db"}, "DATABASE_URL must start with postgresql://"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL must start with redis://"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"MEDANNOT_DEVICE": "tpu"}, "MEDANNOT_DEVICE='tpu'"),
        ({"MEDANNOT_MAX_NEW_TOKENS": "lots"}, "is not an integer"),
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
