"""Production settings: `check --deploy` passes, HTTPS is enforced, and every page works
under the Content-Security-Policy: no inline scripts, handlers or javascript: URLs."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from medannot.middleware import POLICY

ROOT = Path(__file__).resolve().parent.parent

SETTINGS_CODE = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "debug": s.DEBUG,
    "session_secure": s.SESSION_COOKIE_SECURE,
    "session_httponly": s.SESSION_COOKIE_HTTPONLY,
    "csrf_secure": s.CSRF_COOKIE_SECURE,
    "hsts": s.SECURE_HSTS_SECONDS,
    "ssl_redirect": s.SECURE_SSL_REDIRECT,
    "proxy_header": getattr(s, "SECURE_PROXY_SSL_HEADER", None),
    "frame": s.X_FRAME_OPTIONS,
    "nosniff": s.SECURE_CONTENT_TYPE_NOSNIFF,
    "csp": "medannot.middleware.ContentSecurityPolicyMiddleware" in s.MIDDLEWARE,
    "axes": s.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware",
}))
"""


def _production_env(**env) -> dict[str, str]:
    """DEBUG unset (off), a real SECRET_KEY and host names: production as compose runs it."""
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    base = {k: v for k, v in base.items() if not k.startswith(("SECURE_", "MEDANNOT_BEHIND"))}
    return (
        base
        | {
            "DJANGO_SETTINGS_MODULE": "medannot.settings",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "medannot.hospital.example",
            "CSRF_TRUSTED_ORIGINS": "https://medannot.hospital.example",
        }
        | env
    )


def _run(args, env):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "env",
    [{}, {"MEDANNOT_BEHIND_TLS_PROXY": "true"}],
    ids=["gunicorn-facing-browsers", "behind-a-tls-proxy"],
)
def test_check_deploy_passes_under_production_settings(env):
    args = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    result = _run(args, _production_env(**env))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_are_secure_by_default():
    result = _run([sys.executable, "-c", SETTINGS_CODE], _production_env())
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found == {
        "debug": False,
        "session_secure": True,
        "session_httponly": True,
        "csrf_secure": True,
        "hsts": 365 * 24 * 3600,
        "ssl_redirect": True,
        "proxy_header": None,  # X-Forwarded-Proto is a client's word unless a proxy is named
        "frame": "DENY",
        "nosniff": True,
        "csp": True,
        "axes": True,
    }


def test_behind_a_tls_proxy_its_header_is_trusted():
    env = _production_env(MEDANNOT_BEHIND_TLS_PROXY="true")
    found = json.loads(_run([sys.executable, "-c", SETTINGS_CODE], env).stdout)
    assert found["proxy_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]


@pytest.fixture
def https_settings(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    return settings


def test_plain_http_is_redirected_to_https(db, client, https_settings):
    response = client.get(reverse("login"))
    assert response.status_code == 301 and response.url.startswith("https://")


def test_a_forged_proxy_header_does_not_count_as_https(db, client, https_settings):
    response = client.get(reverse("login"), HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301


def test_behind_the_configured_proxy_https_pages_carry_hsts_and_the_policy(
    db, client, https_settings
):
    https_settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = client.get(reverse("login"), HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response.headers["Content-Security-Policy"] == POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_policy_allows_no_inline_script_or_style():
    directives = dict(d.split(" ", 1) for d in POLICY.split("; "))
    for name in ("script-src", "style-src", "default-src"):
        assert "'unsafe-inline'" not in directives[name]
        assert "'unsafe-eval'" not in directives[name]
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"


# ---------------------------------------------------------------------------- inline code

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)
HANDLER = re.compile(r"""<[a-z][^>]*?\s(on[a-z]+)\s*=""", re.IGNORECASE | re.DOTALL)
JS_URL = re.compile(r"""(?:href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.I)
STYLE_ATTR = re.compile(r"""<[a-z][^>]*?\sstyle\s*=""", re.IGNORECASE | re.DOTALL)
JSON_TYPE = re.compile(r"""\btype\s*=\s*["']?application/(?:ld\+)?json""", re.IGNORECASE)


def inline_code(html: str) -> list[str]:
    """What a strict CSP would block in this HTML: inline scripts, handlers, javascript: URLs,
    style attributes (style-src 'self').

    A <script> with a src, or holding JSON data (json_script), is allowed."""
    found = []
    for match in SCRIPT_TAG.finditer(html):
        attrs = match.group(1)
        if "src=" not in attrs.replace(" ", "") and not JSON_TYPE.search(attrs):
            found.append(match.group(0))
    found += [m.group(0)[-60:] for m in HANDLER.finditer(html)]
    found += [m.group(0) for m in JS_URL.finditer(html)]
    found += [m.group(0)[-60:] for m in STYLE_ATTR.finditer(html)]
    return found


def _templates() -> list[Path]:
    return sorted((ROOT / "templates").rglob("*.html")) + sorted(
        (ROOT / "annotations").rglob("templates/**/*.html")
    )


def test_the_checker_finds_each_kind_of_inline_code():
    assert inline_code("<script>alert(1)</script>")
    assert inline_code('<img src=x onerror="alert(1)">')
    assert inline_code('<button class="a"\n onclick=go()>')
    assert inline_code('<a href="javascript:alert(1)">')
    assert inline_code('<div class="x" style="color: red">')
    assert not inline_code('<script src="/static/js/app.js" defer></script>')
    assert not inline_code('<script id="d" type="application/json">{"on": 1}</script>')
    assert not inline_code("<p>Data-driven decisions=good</p>")


@pytest.mark.parametrize("path", _templates(), ids=lambda p: str(p.relative_to(ROOT)))
def test_templates_have_no_inline_code(path):
    assert inline_code(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "path", sorted((ROOT / "static" / "js").glob("*.js")), ids=lambda p: p.name
)
def test_our_scripts_build_no_inline_code(path):
    """Markup built in JavaScript, and eval-like calls, would be refused by the policy too."""
    text = path.read_text(encoding="utf-8")
    assert inline_code(text) == []
    assert not re.search(r"""setAttribute\(\s*["']on""", text)
    assert not re.search(r"\beval\(|new Function\(|setTimeout\(\s*[\"']", text)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDANNOT_LOGIN_FAILURE_LIMIT": "0"}, "MEDANNOT_LOGIN_FAILURE_LIMIT must be at least 1"),
        ({"MEDANNOT_LOGIN_COOLOFF_MINUTES": "0"}, "MEDANNOT_LOGIN_COOLOFF_MINUTES must be at"),
        ({"MEDANNOT_SESSION_IDLE_MINUTES": "1"}, "MEDANNOT_SESSION_IDLE_MINUTES must be at"),
        ({"MEDANNOT_SESSION_IDLE_MINUTES": "soon"}, "is not an integer"),
    ],
)
def test_a_bad_security_setting_fails_loudly_at_start(env, message):
    result = _run([sys.executable, "-c", "import django; django.setup()"], _production_env(**env))
    assert result.returncode != 0 and message in result.stderr
