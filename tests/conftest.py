"""Personas, a CSRF-enforcing client, the demo model and a real Celery worker."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.backends.postgresql.operations import DatabaseOperations as PgOps
from django.test import Client

from annotations import services
from annotations.models import Modality, Role
from medannot.celery import worker_argv

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


def _flush_past_the_audit_guard(sql_flush):
    """The database refuses TRUNCATE of the audit trail (migration 0018); the test database's
    flush between transactional tests lifts that trigger for its own TRUNCATE only."""

    def flush(self, style, tables, **kwargs):
        statements = sql_flush(self, style, tables, **kwargs)
        if "annotations_auditevent" not in tables or not statements:
            return statements
        guard = "ALTER TABLE annotations_auditevent {} TRIGGER annotations_auditevent_no_truncate"
        return [guard.format("DISABLE"), *statements, guard.format("ENABLE")]

    return flush


PgOps.sql_flush = _flush_past_the_audit_guard(PgOps.sql_flush)


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
    p.superuser = get_user_model().objects.create_superuser("sue", password="password")  # the site
    p.project_admin = _user("alice")  # admin of `project` only
    p.admin = p.project_admin  # the admin most tests mean: of `project`
    p.other_admin = _user("adam")  # admin of `other_project` only: an admin of ANOTHER project
    p.pathologist = _user("paul")  # pathologist, member of `project`
    p.other_pathologist = _user("olga")  # pathologist of `other_project` only
    p.researcher = _user("rita")  # researcher, member of `project`: uploads
    p.outsider = _user("oscar")  # logged in, member of nothing
    p.project = services.project_create(
        name="Breast biopsies",
        modality=Modality.PATHOLOGY,
        members=[
            (p.project_admin, Role.ADMIN),
            (p.pathologist, Role.PATHOLOGIST),
            (p.researcher, Role.RESEARCHER),
        ],
    )
    p.other_project = services.project_create(
        name="Melanoma photos",
        modality=Modality.DERMATOLOGY,
        members=[(p.other_admin, Role.ADMIN), (p.other_pathologist, Role.PATHOLOGIST)],
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
    from imaging import samples

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


class Worker:
    """A real Celery worker process on the real Redis broker, drafting with the demo model."""

    def __init__(self, *, media_root: Path, log: Path, model_dir: Path, **env: str) -> None:
        from django.db import connection

        self.media_root, self.log = media_root, log
        self.hostname = f"test-gpu-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        full_env = (
            os.environ
            | {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DATABASE_URL": database_url(connection.settings_dict),
                "REDIS_URL": settings.REDIS_URL,
                "MEDANNOT_MODEL": str(model_dir),
                "MEDIA_ROOT": str(media_root),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
            | env
        )
        with log.open("a") as out:
            self.process = subprocess.Popen(
                worker_argv(self.hostname),
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killable as a whole
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        from medannot.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited:\n{self.log.read_text()}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        self.kill()
        raise RuntimeError(f"the Celery worker did not answer:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, as a node crash would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="module")
def celery_worker(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A real worker for the tests of one module; no other worker runs meanwhile."""
    from medannot.celery import app

    app.control.purge()
    media = tmp_path_factory.mktemp("worker-media")
    worker = Worker(
        media_root=media,
        log=tmp_path_factory.mktemp("worker-log") / "worker.log",
        model_dir=demo_model_dir,
    )
    yield worker
    worker.stop()
    shutil.rmtree(media, ignore_errors=True)


class Broker:
    """Points the Celery app and the Django cache at a closed port (Redis down), and back."""

    DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    def __init__(self, settings) -> None:
        from medannot.celery import app

        self.app, self.settings = app, settings
        self.url, self.caches = app.conf.broker_url, settings.CACHES

    def _reset_pools(self) -> None:
        # New pools for the new URL (kombu keeps one per URL: never close the shared one).
        self.app._pool = None
        self.app.amqp._producer_pool = None

    def down(self) -> None:
        self._reset_pools()
        self.app.conf.broker_url = self.DOWN_URL
        default = self.caches["default"]
        self.settings.CACHES = {"default": default | {"LOCATION": self.DOWN_URL}}

    def up(self) -> None:
        self._reset_pools()
        self.app.conf.broker_url = self.url
        self.settings.CACHES = self.caches


@pytest.fixture
def broker_down(settings):
    """Redis (broker and cache) unreachable for the test; `broker_down.up()` brings it back."""
    broker = Broker(settings)
    broker.down()
    yield broker
    broker.up()
