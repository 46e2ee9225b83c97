"""Personas, a CSRF-enforcing client, the demo model and a real Celery worker."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from annotations import services
from annotations.models import Modality, Role

ROOT = Path(__file__).resolve().parent.parent


class CsrfClient(Client):
    """Enforces CSRF like a browser session: every unsafe request carries the token."""

    def __init__(self, **kwargs):
        super().__init__(enforce_csrf_checks=True, **kwargs)
        self.csrf_token = secrets.token_hex(16)  # 32 chars: a valid unmasked secret
        self.cookies[settings.CSRF_COOKIE_NAME] = self.csrf_token

    def generic(self, method, path, *args, **extra):
        if method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            extra.setdefault("HTTP_X_CSRFTOKEN", self.csrf_token)
        return super().generic(method, path, *args, **extra)


@pytest.fixture(autouse=True)
def _media_root(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()


def _user(username: str):
    return get_user_model().objects.create_user(username, password="password")


@pytest.fixture
def people(db):
    """The personas of every permission test, and their two projects."""

    class People:
        pass

    p = People()
    p.admin = _user("alice")  # admin of the site (group admin)
    p.admin.groups.add(services.groups_ensure()[Role.ADMIN])
    p.pathologist = _user("paul")  # pathologist, member of `project`
    p.other_pathologist = _user("olga")  # pathologist of `other_project` only
    p.researcher = _user("rita")  # researcher, member of `project`: uploads
    p.outsider = _user("oscar")  # logged in, member of nothing
    p.project = services.project_create(
        name="Breast biopsies",
        modality=Modality.PATHOLOGY,
        members=[(p.pathologist, Role.PATHOLOGIST), (p.researcher, Role.RESEARCHER)],
    )
    p.other_project = services.project_create(
        name="Melanoma photos",
        modality=Modality.DERMATOLOGY,
        members=[(p.other_pathologist, Role.PATHOLOGIST)],
    )
    return p


@pytest.fixture
def client_for():
    def make(user) -> CsrfClient:
        client = CsrfClient()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    from inference.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo-model"))


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory) -> dict[str, Path]:
    from annotations import samples

    d = tmp_path_factory.mktemp("samples")
    return {
        "slide": samples.write_synthetic_slide(
            d / "biopsy-1.tiff", width=1536, height=1024, seed=3
        ),
        "svs": samples.write_synthetic_slide(
            d / "biopsy-2.svs", width=1536, height=1024, seed=4, flavour="aperio"
        ),
        "photo": samples.write_derm_photo(d / "lesion-1.jpg", seed=1),
        "photo2": samples.write_derm_photo(d / "lesion-2.png", seed=2, fmt="PNG"),
    }


def database_url(db: dict) -> str:
    """The URL of the test database, for processes the tests start."""
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = f"{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}"
    return f"postgresql://{auth}@{host}/{quote(db['NAME'])}"


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A real Celery worker on the real Redis broker, drafting with the demo model."""
    from django.db import connection

    from medannot.celery import app

    app.control.purge()
    media = tmp_path_factory.mktemp("worker-media")
    db = connection.settings_dict
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(db),
        "REDIS_URL": settings.REDIS_URL,
        "MEDANNOT_MODEL": str(demo_model_dir),
        "MEDIA_ROOT": str(media),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    hostname = f"test-gpu-{os.getpid()}@localhost"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "medannot",
                "worker",
                "-Q",
                "gpu",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--without-gossip",
                "--without-mingle",
                "-n",
                hostname,
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Celery worker exited:\n{log.read_text()}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            break
    else:
        proc.kill()
        raise RuntimeError(f"the Celery worker did not answer:\n{log.read_text()}")

    class Worker:
        pass

    worker = Worker()
    worker.process, worker.media_root, worker.log, worker.hostname = proc, media, log, hostname
    yield worker
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(media, ignore_errors=True)
