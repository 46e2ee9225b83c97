"""Request plumbing: the Content-Security-Policy, idle sessions, the login lockout."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "object-src 'none'",
    ]
)

# The session key holding when the expiry was last pushed back (seconds since the epoch).
LAST_SEEN_KEY = "_medannot_last_seen"
# The expiry is pushed back at most this often: one session write a minute, not one a request.
REFRESH_SECONDS = 60
# Views an open page calls by itself (timers), and views an htmx timer polls: not activity.
BACKGROUND_VIEWS = frozenset({"claim-renew", "project-status", "healthz"})
# Views that authorise by a signed token, never by the session: a slide's hundreds of tiles
# must not each read the session and the user (tests/test_tiles.py counts none).
SESSIONLESS_VIEWS = frozenset({"slide-dzi", "slide-tile"})
POLLED_VIEWS = frozenset({"export-job"})


class ContentSecurityPolicyMiddleware:
    """A strict Content-Security-Policy: every script and style is served from our own origin."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response


class SessionIdleMiddleware:
    """Keeps a signed-in session alive while it is used; it ends after
    MEDANNOT_SESSION_IDLE_MINUTES without a request (SESSION_COOKIE_AGE).

    The session store drops a session whose expiry has passed, so all this does is push the
    expiry back, by saving the session, at most once a minute: the review pages, which
    post a decision every few seconds, do not pay a session write each time. What an open
    page asks for by itself (the claim heartbeat, status polling) is not use: a review page
    left open on an unattended workstation must still log out.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> None:
        session = getattr(request, "session", None)
        if session is None or not session.session_key or _is_background(request):
            return None
        if request.user.is_authenticated:
            now = int(timezone.now().timestamp())
            if now - session.get(LAST_SEEN_KEY, 0) >= REFRESH_SECONDS:
                session[LAST_SEEN_KEY] = now  # modified: saved with a fresh expiry
        return None


def _is_background(request: HttpRequest) -> bool:
    name = request.resolver_match.url_name if request.resolver_match else None
    if name in BACKGROUND_VIEWS or name in SESSIONLESS_VIEWS:
        return True
    return name in POLLED_VIEWS and request.headers.get("HX-Request") == "true"


def client_ip(request: HttpRequest) -> str | None:
    """The client's address for counting failed logins (django-axes).

    REMOTE_ADDR, unless MEDANNOT_CLIENT_IP_HEADER names the header a proxy in front sets:
    then the last address in it, the one that proxy saw (earlier ones the client may forge).
    """
    header = settings.MEDANNOT_CLIENT_IP_HEADER
    if header:
        key = "HTTP_" + header.upper().replace("-", "_")
        forwarded = [a.strip() for a in request.META.get(key, "").split(",") if a.strip()]
        if forwarded:
            return forwarded[-1]
    return request.META.get("REMOTE_ADDR")


def login_locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """The page shown instead of the login form while too many failed logins lock it."""
    context = {
        "cooloff_minutes": settings.MEDANNOT_LOGIN_COOLOFF_MINUTES,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
    }
    return render(request, "registration/locked_out.html", context, status=429)
