"""scripts/workers.sh (bounded stop, replacing a leftover worker) and scripts/services.sh
(starting the local PostgreSQL and Redis), run with stand-in processes and stub commands."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "scripts" / "workers.sh"
SERVICES = ROOT / "scripts" / "services.sh"

# A worker whose warm shutdown never ends: it ignores SIGTERM (and so does its child).
STUBBORN = ["bash", "-c", 'trap "" TERM; sleep 1000; exit 0', "celery-worker-stand-in"]


@pytest.fixture
def stubborn():
    process = subprocess.Popen(STUBBORN, start_new_session=True)
    yield process
    if process.poll() is None:
        os.killpg(process.pid, 9)
        process.wait()


def workers(script: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = os.environ | {"MEDANNOT_STOP_TIMEOUT": "1", "MEDANNOT_RUN_DIR": str(tmp_path)}
    return subprocess.run(
        ["bash", "-c", f"source {WORKERS}; {script}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_stop_kills_a_worker_that_ignores_sigterm(stubborn, tmp_path):
    pidfile = tmp_path / "worker-gpu.pid"
    pidfile.write_text(f"{stubborn.pid}\n")
    result = workers(f"worker_stop {pidfile}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert stubborn.wait(timeout=10) == -9  # killed once the bound had passed
    assert not pidfile.exists()
    assert "did not stop within 1 s" in result.stdout


def test_start_replaces_a_live_leftover_worker(stubborn, tmp_path):
    pidfile = tmp_path / "worker.pid"
    pidfile.write_text(f"{stubborn.pid}\n")
    started = tmp_path / "started"
    result = workers(
        f"worker_start {pidfile} bash -c 'echo \"$@\" > {started}' new-worker", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert stubborn.wait(timeout=10) is not None
    assert started.read_text().split() == ["--pidfile", str(pidfile), "--detach"]


def test_a_stale_pidfile_is_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = tmp_path / "worker.pid"
    pidfile.write_text(f"{gone.pid}\n")
    result = workers(f"worker_stop {pidfile}", tmp_path)
    assert result.returncode == 0 and not pidfile.exists()


def test_a_pidfile_of_another_program_is_not_acted_on(tmp_path):
    other = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        pidfile = tmp_path / "worker.pid"
        pidfile.write_text(f"{other.pid}\n")
        result = workers(f"worker_stop {pidfile}", tmp_path)
        assert result.returncode == 0 and not pidfile.exists()
        assert other.poll() is None  # not a Celery worker: left alone
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------------------- services.sh

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$STUB_DIR/calls"
"""
STUBS = {
    # Answers when the state file exists; the start commands create it.
    "pg_isready": 'test -e "$STUB_DIR/pg-up"',
    "redis-cli": 'test -e "$STUB_DIR/redis-up"',
    "pg_ctlcluster": 'touch "$STUB_DIR/pg-up"',
    "redis-server": 'touch "$STUB_DIR/redis-up"',
    "docker": 'case $1 in info) exit "${DOCKER_INFO_RC:-0}";; esac; exit 0',
}
TOOLS = ["bash", "ls", "sort", "tail", "sleep", "cat", "touch", "basename", "dirname"]


@pytest.fixture
def stubs(tmp_path):
    """A PATH with the stub commands and the few real tools the script needs, nothing else."""

    def make(*present: str) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name in present:
            path = bin_dir / name
            path.write_text(STUB + STUBS[name] + "\n")
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        for tool in TOOLS:
            (bin_dir / tool).symlink_to(shutil.which(tool))
        (tmp_path / "etc-postgresql" / "16").mkdir(parents=True)
        return bin_dir

    return make


def services(tmp_path: Path, bin_dir: Path, *up: str, **env: str) -> list[str]:
    for name in up:
        (tmp_path / f"{name}-up").touch()
    full_env = {
        "PATH": str(bin_dir),
        "STUB_DIR": str(tmp_path),
        "MEDANNOT_SERVICES_WAIT": "1",
        "MEDANNOT_PG_ETC": str(tmp_path / "etc-postgresql"),
    } | env
    result = subprocess.run(
        [shutil.which("bash"), str(SERVICES)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = tmp_path / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line for line in lines if not line.startswith(("pg_isready", "redis-cli"))]


def test_it_starts_the_installed_postgresql_and_redis(tmp_path, stubs):
    calls = services(tmp_path, stubs("pg_isready", "redis-cli", "pg_ctlcluster", "redis-server"))
    assert calls == [
        "pg_ctlcluster --skip-systemctl-redirect 16 main start",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save  --appendonly no",
    ]


def test_it_starts_nothing_when_both_answer(tmp_path, stubs):
    bin_dir = stubs("pg_isready", "redis-cli", "pg_ctlcluster", "redis-server", "docker")
    assert services(tmp_path, bin_dir, "pg", "redis") == []


def test_it_uses_docker_compose_when_nothing_is_installed(tmp_path, stubs):
    calls = services(tmp_path, stubs("docker"))
    assert "docker compose -f compose.dev.yml up -d postgres redis" in calls


def test_it_leaves_docker_alone_when_its_engine_is_not_running(tmp_path, stubs):
    calls = services(tmp_path, stubs("docker"), DOCKER_INFO_RC="1")
    assert calls == ["docker info"]


def test_it_never_touches_services_on_other_hosts(tmp_path, stubs):
    bin_dir = stubs("pg_isready", "redis-cli", "pg_ctlcluster", "redis-server", "docker")
    calls = services(
        tmp_path,
        bin_dir,
        DATABASE_URL="postgresql://medannot:pw@db.hospital.example:5432/medannot",
        REDIS_URL="redis://cache.hospital.example:6379/0",
    )
    assert calls == []
