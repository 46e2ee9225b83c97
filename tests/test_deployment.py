"""Deployment checks: docker-compose.yml, vendored static files, no CDN in templates.

No database or services needed, and nothing from the project is imported (Django settings
would want PostgreSQL and Redis); entry points are found with importlib's spec and `ast`.

    .venv/bin/pytest -p no:django -p no:cacheprovider --noconftest tests/test_deployment.py -q
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
VENDOR_SCRIPT = REPO / "scripts" / "vendor_static.py"
SKIP_DIRS = {".venv", "venv", ".git", "node_modules", "var", "static", "__pycache__"}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "docker-compose.yml has no services mapping"
    )
    return data


@pytest.fixture()
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


def command_tokens(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def option_values(tokens: list[str], *names: str) -> list[str]:
    """Values of an option given as `-Q v`, `--queues v` or `--queues=v`."""
    values = []
    for i, token in enumerate(tokens):
        for name in names:
            if token == name and i + 1 < len(tokens):
                values.append(tokens[i + 1])
            elif name.startswith("--") and token.startswith(name + "="):
                values.append(token.split("=", 1)[1])
    return values


def module_defines(path: Path, name: str) -> bool:
    """Whether a module binds `name` at top level (assignment, def, class or import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in ast.walk(target)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                return True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    return True
    return False


def module_file(module: str) -> Path:
    """The source file of a project module, found without executing that module."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        pytest.fail(f"module {module!r} cannot be located: {exc}")
    assert spec is not None and spec.origin, f"module {module!r} does not exist"
    path = Path(spec.origin)
    assert path.suffix == ".py" and path.is_file(), f"{module!r} is not a source module: {path}"
    return path


def is_project_service(name: str, service: dict, services: dict) -> bool:
    """A service that runs the project's image (built here, or tagged as the built one)."""
    if "build" in service:
        return True
    built_images = {s.get("image") for s in services.values() if "build" in s and s.get("image")}
    return service.get("image") in built_images


def management_command_exists(command: str) -> bool:
    django_spec = importlib.util.find_spec("django")
    assert django_spec and django_spec.origin, "Django is not installed"
    django_dir = Path(django_spec.origin).parent
    builtin = [
        django_dir / "core" / "management" / "commands" / f"{command}.py",
        *django_dir.glob(f"contrib/*/management/commands/{command}.py"),
    ]
    if any(path.is_file() for path in builtin):
        return True
    for top in REPO.iterdir():  # the project's own apps, not .venv/ and the like
        if top.is_dir() and top.name not in SKIP_DIRS and not top.name.startswith("."):
            if any(top.glob(f"**/management/commands/{command}.py")):
                return True
    return False


def check_entry_point(service_name: str, tokens: list[str]) -> None:
    """Fail unless the command starts a real entry point of the project."""
    assert tokens, f"service {service_name!r} runs project code but has no command"
    program = Path(tokens[0]).name
    if program == "gunicorn":
        targets = [t for t in tokens[1:] if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", t)]
        assert targets, f"{service_name}: gunicorn command names no module:attr"
        module, attr = targets[0].split(":")
        assert module_defines(module_file(module), attr), (
            f"{service_name}: {module} does not define {attr!r}"
        )
    elif program == "celery":
        apps = option_values(tokens, "-A", "--app")
        assert apps, f"{service_name}: celery command has no -A/--app"
        app = apps[0]
        if ":" in app:
            module, attr = app.split(":", 1)
            assert module_defines(module_file(module), attr), (
                f"{service_name}: {module} does not define {attr!r}"
            )
        else:
            # `-A medannot` finds the Celery app in medannot/celery.py, named `app`.
            path = module_file(f"{app}.celery")
            assert module_defines(path, "app"), f"{service_name}: {path} does not define `app`"
    elif program.startswith("python") and len(tokens) >= 3 and tokens[1] == "manage.py":
        assert (REPO / "manage.py").is_file(), f"{service_name}: manage.py is missing"
        command = tokens[2]
        assert management_command_exists(command), (
            f"{service_name}: no management command {command!r} (neither Django's nor "
            "*/management/commands/{command}.py in the repo)"
        )
    else:
        pytest.fail(f"{service_name}: unrecognised entry point {' '.join(tokens)!r}")


def named_volume_mounts(service: dict) -> dict[str, str]:
    """Named volume -> container path, from short (`media:/data/media`) or long syntax."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) >= 2 and not parts[0].startswith((".", "/", "~")):
                mounts[parts[0]] = parts[1]
        elif isinstance(entry, dict) and entry.get("type", "volume") == "volume":
            if entry.get("source"):
                mounts[entry["source"]] = entry["target"]
    return mounts


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


# ---------------------------------------------------------------------------- compose


def test_required_services_exist(compose: dict) -> None:
    missing = {"postgres", "redis", "web", "worker-gpu"} - set(compose["services"])
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_worker_gpu_reserves_an_nvidia_gpu(compose: dict) -> None:
    service = compose["services"]["worker-gpu"]
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    assert any(
        d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices
    ), "worker-gpu has no deploy.resources.reservations.devices entry for an nvidia gpu"


def test_project_services_start_real_entry_points(compose: dict, repo_on_path: None) -> None:
    services = compose["services"]
    project = [n for n, s in services.items() if is_project_service(n, s, services)]
    assert {"web", "worker-gpu"} <= set(project), "web/worker-gpu do not run the project image"
    for name in project:
        check_entry_point(name, command_tokens(services[name]))


def test_web_serves_the_wsgi_application(compose: dict) -> None:
    tokens = command_tokens(compose["services"]["web"])
    assert tokens and Path(tokens[0]).name == "gunicorn", "web does not run gunicorn"


def test_only_worker_gpu_consumes_the_gpu_queue(compose: dict) -> None:
    services = compose["services"]
    consumers = []
    for name, service in services.items():
        tokens = command_tokens(service)
        if tokens and Path(tokens[0]).name == "celery" and "worker" in tokens:
            queues = {
                q.strip()
                for value in option_values(tokens, "-Q", "--queues")
                for q in value.split(",")
            }
            if "gpu" in queues:
                consumers.append(name)
    assert consumers == ["worker-gpu"], (
        f"queue `gpu` must be consumed by worker-gpu alone (-Q gpu); consumers: {consumers}"
    )


def test_web_and_worker_gpu_share_the_media_volume(compose: dict) -> None:
    services = compose["services"]
    assert "media" in (compose.get("volumes") or {}), "top-level volume `media` is not declared"
    web = named_volume_mounts(services["web"])
    gpu = named_volume_mounts(services["worker-gpu"])
    assert "media" in web and "media" in gpu, "web and worker-gpu must both mount `media`"
    assert web["media"] == gpu["media"], "`media` is mounted at different paths"
    for name in ("web", "worker-gpu"):
        media_root = environment(services[name]).get("MEDIA_ROOT")
        assert media_root == web["media"], (
            f"{name}: MEDIA_ROOT={media_root!r} is not the media mount {web['media']!r}"
        )


def test_worker_gpu_keeps_the_model_cache_on_a_volume(compose: dict) -> None:
    service = compose["services"]["worker-gpu"]
    hf_home = environment(service).get("HF_HOME")
    assert hf_home, "worker-gpu sets no HF_HOME"
    mounts = named_volume_mounts(service)
    assert hf_home in mounts.values(), (
        f"HF_HOME={hf_home!r} is not a named volume: the model would be fetched on every start"
    )
    assert "HF_TOKEN" in environment(service), "worker-gpu does not pass HF_TOKEN through"


FALSE_VALUES = {"0", "false", "no", "off"}


def test_project_services_run_production_settings(compose: dict) -> None:
    services = compose["services"]
    project = [n for n, s in services.items() if is_project_service(n, s, services)]
    for name in project:
        env = environment(services[name])
        assert env.get("DEBUG", "").strip().lower() in FALSE_VALUES, f"{name}: DEBUG is not off"
        # A key from the operator, never a default written here: `${SECRET_KEY:?...}` or a file.
        key = env.get("SECRET_KEY", "")
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]*\}", key) or env.get("SECRET_KEY_FILE"), (
            f"{name}: SECRET_KEY={key!r} must come from the environment or SECRET_KEY_FILE"
        )
        assert env.get("ALLOWED_HOSTS", "").strip(), f"{name}: ALLOWED_HOSTS is not set"


def dockerfile_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV lines set (KEY=VALUE form, continued lines)."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.split(maxsplit=1)[:1] == ["ENV"]:
            words = shlex.split(line, comments=True)
            env |= dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return env


def test_the_image_runs_production_settings() -> None:
    env = dockerfile_env()
    assert env.get("DEBUG", "").lower() in FALSE_VALUES, "the Dockerfile does not turn DEBUG off"
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(ENV|ARG)\b.*\bSECRET_KEY\b", text, re.M), (
        "the image bakes in a SECRET_KEY: it must come from the environment at run time"
    )


# ---------------------------------------------------------------------------- static files


def test_vendored_static_files_match_manifest() -> None:
    result = subprocess.run(
        [sys.executable, str(VENDOR_SCRIPT), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"vendor_static.py --check failed:\n{result.stderr}"


def load_vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_static", VENDOR_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tarball(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("package/../../evil.js"),
        tarfile.TarInfo("/etc/evil.js"),
        tarfile.TarInfo("../evil.js"),
    ],
    ids=["dotdot", "absolute", "parent"],
)
def test_vendor_refuses_escaping_members(member: tarfile.TarInfo, tmp_path: Path) -> None:
    vendor = load_vendor_script()
    ok = tarfile.TarInfo("package/dist/lib.min.js")
    data = make_tarball(ok, member)
    with pytest.raises(vendor.VendorError, match="escapes|absolute"):
        vendor.extract_selected(data, {"files": {"dist/lib.min.js": "lib.min.js"}}, tmp_path)
    assert not (tmp_path.parent / "evil.js").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_vendor_refuses_links(kind: bytes, tmp_path: Path) -> None:
    vendor = load_vendor_script()
    link = tarfile.TarInfo("package/dist/lib.min.js")
    link.type = kind
    link.linkname = "/etc/passwd"
    data = make_tarball(link)
    with pytest.raises(vendor.VendorError, match="link"):
        vendor.extract_selected(data, {"files": {"dist/lib.min.js": "lib.min.js"}}, tmp_path)
    assert not (tmp_path / "lib.min.js").exists()


def test_vendor_extracts_only_selected_files(tmp_path: Path) -> None:
    vendor = load_vendor_script()
    data = make_tarball(
        tarfile.TarInfo("package/dist/lib.min.js"),
        tarfile.TarInfo("package/dist/lib.js"),
        tarfile.TarInfo("package/img/a.png"),
    )
    spec = {"files": {"dist/lib.min.js": "lib.min.js"}, "dirs": {"img": "images"}}
    written = vendor.extract_selected(data, spec, tmp_path)
    assert sorted(written) == ["images/a.png", "lib.min.js"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "images/a.png",
        "lib.min.js",
    ]


def test_vendor_integrity_mismatch_is_refused() -> None:
    vendor = load_vendor_script()
    with pytest.raises(vendor.VendorError, match="does not match"):
        vendor.verify_integrity(b"tampered", "sha512-" + "A" * 86 + "==", "pkg@1.0.0")


# ---------------------------------------------------------------------------- templates

CDN_REFERENCE = re.compile(
    r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//""",
    re.IGNORECASE,
)


def template_files() -> list[Path]:
    found = set(REPO.glob("templates/**/*.html"))
    found.update(REPO.glob("*/templates/**/*.html"))  # app templates too
    return sorted(p for p in found if not SKIP_DIRS.intersection(p.relative_to(REPO).parts))


def test_templates_load_no_scripts_or_styles_from_a_cdn() -> None:
    offenders = []
    for path in template_files():
        text = path.read_text(encoding="utf-8")
        for match in CDN_REFERENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)}")
    assert not offenders, (
        "templates load from the network (closed hospital networks: vendor it into "
        "static/vendor/ with scripts/vendor_static.py):\n" + "\n".join(offenders)
    )


def celery_queues(tokens: list[str]) -> set[str]:
    values = option_values(tokens, "-Q", "--queues")
    return {q.strip() for value in values for q in value.split(",")}


def test_the_sweep_runs_apart_from_the_gpu_worker(compose: dict) -> None:
    """Beat and the `celery` queue (the sweeps) must not wait behind a hung draft."""
    services = compose["services"]
    gpu = command_tokens(services["worker-gpu"])
    assert celery_queues(gpu) == {"gpu"}, "worker-gpu must consume the gpu queue only"
    assert option_values(gpu, "--concurrency", "-c") == ["1"]
    assert "-B" not in gpu and "--beat" not in gpu and "beat" not in gpu[1:3]
    beats = [
        name
        for name, service in services.items()
        if (tokens := command_tokens(service))
        and Path(tokens[0]).name == "celery"
        and ("beat" in tokens or "-B" in tokens or "--beat" in tokens)
    ]
    assert beats and "worker-gpu" not in beats, f"no beat apart from worker-gpu: {beats}"
    consumers = [
        name
        for name, service in services.items()
        if (tokens := command_tokens(service))
        and "worker" in tokens
        and "celery" in celery_queues(tokens)
    ]
    assert consumers and "worker-gpu" not in consumers, "nothing consumes the `celery` queue"


def test_make_run_starts_a_gpu_worker_and_a_separate_beat_worker() -> None:
    script = (REPO / "scripts" / "workers.sh").read_text(encoding="utf-8")
    starts = [line for line in script.replace("\\\n", " ").splitlines() if "worker_start " in line]
    starts = [line for line in starts if "celery -A" in line]
    gpu = [line for line in starts if "-Q gpu " in line]
    other = [line for line in starts if "-Q celery " in line]
    assert len(gpu) == 1 and "--concurrency 1" in gpu[0] and " -B" not in gpu[0]
    assert len(other) == 1 and " -B" in other[0]
    run = (REPO / "scripts" / "run.sh").read_text(encoding="utf-8")
    assert "workers.sh" in run and "workers_start" in run and "workers_stop" in run


def test_the_development_services_answer_where_the_default_urls_look():
    """scripts/services.sh falls back to compose.dev.yml: its PostgreSQL and Redis must answer
    at the defaults of make run and make test (postgres@localhost:5432 with no password,
    redis on localhost:6379), on the loopback address only."""
    dev = yaml.safe_load((REPO / "compose.dev.yml").read_text())["services"]
    assert dev["postgres"]["ports"] == ["127.0.0.1:5432:5432"]
    assert dev["postgres"]["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "POSTGRES_USER" not in dev["postgres"]["environment"]  # the image's: postgres
    assert dev["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert "compose.dev.yml" in (REPO / "scripts" / "services.sh").read_text()
