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
    post a decision every few seconds, do not pay a session write each time.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = getattr(request, "session", None)
        if session is not None and session.session_key and request.user.is_authenticated:
            now = int(timezone.now().timestamp())
            if now - session.get(LAST_SEEN_KEY, 0) >= REFRESH_SECONDS:
                session[LAST_SEEN_KEY] = now  # modified: saved with a fresh expiry
        return self.get_response(request)


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
