"""API tokens: made, checked, rate-limited and revoked here, for the API and the tus upload.

A token reads ``ma_<prefix>_<secret>``. Only the SHA-256 of the secret is stored; the
prefix finds the row, and the hashes are compared in constant time. The token is shown
once, when it is made.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from annotations import services
from annotations.models import ApiToken

log = logging.getLogger(__name__)

PREFIX = "ma_"
# How often a token's "last used" is written: a busy script must not write on every call.
LAST_USED_EVERY = timedelta(minutes=1)


class TokenRefused(Exception):
    """No token, an unknown one, or one revoked or expired: 401."""


class RateLimited(Exception):
    """Too many requests with this token in the past minute: 429, retry after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests: wait {retry_after} s.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # the whole token, to show once; never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    expires_at: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> NewToken:
    """A new token for `user`; the returned secret is the only copy there will be."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name.strip()[:100] or "API token",
            prefix=prefix,
            secret_sha256=_digest(secret),
            expires_at=expires_at,
        )
        services.audit_record(
            action="api_token.create",
            actor=actor or user,
            after={"user": user.get_username(), "name": token.name, "prefix": prefix},
        )
    return NewToken(token=token, secret=f"{PREFIX}{prefix}_{secret}")


def token_revoke(*, token: ApiToken, actor: AbstractBaseUser, reason: str = "") -> bool:
    """Revoke `token` at once; False when it was revoked already (nothing audited twice)."""
    with transaction.atomic():
        changed = ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(
            revoked_at=timezone.now()
        )
        if changed:
            services.audit_record(
                action="api_token.revoke",
                actor=actor,
                before={"user": token.user.get_username(), "name": token.name},
                after={"prefix": token.prefix, "revoked": True},
                reason=reason,
            )
    return bool(changed)


def tokens_of(user: AbstractBaseUser):
    return ApiToken.objects.filter(user=user)


def token_authenticate(raw: str) -> ApiToken:
    """The live token for `raw`, with its user; else TokenRefused (one answer for every
    reason, so that a guess learns nothing)."""
    prefix, _, secret = raw.strip().removeprefix(PREFIX).partition("_")
    if not prefix or not secret:
        raise TokenRefused
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(prefix=prefix, revoked_at=None, user__is_active=True)
        .filter(Q(expires_at=None) | Q(expires_at__gt=now))
        .first()
    )
    # Compared even without a row, so that the time taken does not say whether it exists.
    stored = token.secret_sha256 if token else "0" * 64
    if not hmac.compare_digest(stored, _digest(secret)) or token is None:
        raise TokenRefused
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


RATE_WINDOW = 60  # seconds: the limit is per minute
_clock = time.time


def rate_check(token: ApiToken) -> None:
    """At most MEDANNOT_API_RATE_PER_MINUTE requests per token in any minute, counted in the
    cache (Redis) as a sliding window: this minute's count plus the last minute's, weighted
    by how much of it still lies within the past 60 seconds. A fixed window would let a
    client send twice the limit across a minute's turn. RateLimited past it, with how long
    until the next request would go through; a refused request is not counted. With Redis
    down the request goes through: the API must not fail because its limiter cannot count."""
    limit = settings.MEDANNOT_API_RATE_PER_MINUTE
    now = _clock()
    window, into = divmod(now, RATE_WINDOW)
    key, previous_key = (f"api-rate:{token.pk}:{int(w)}" for w in (window, window - 1))
    try:
        cache.add(key, 0, timeout=2 * RATE_WINDOW + 1)
        count = cache.incr(key)
        previous = cache.get(previous_key) or 0
        over = previous * (RATE_WINDOW - into) / RATE_WINDOW + count > limit
        if over:
            cache.decr(key)
    except Exception:  # noqa: BLE001 - any cache failure: count nothing, log it
        log.warning("API rate limit not counted: the cache is unreachable", exc_info=True)
        return
    if over:
        raise RateLimited(retry_after=_retry_after(limit, previous, count - 1, into))


def _retry_after(limit: int, previous: int, count: int, into: float) -> int:
    """Whole seconds until one more request fits: `count` requests counted in this window
    (`into` seconds old) and `previous` in the one before."""
    if count < limit and previous:
        # Within this window, once enough of the last one has slid out.
        fits_at = RATE_WINDOW * (1 - (limit - count - 1) / previous)
    else:
        # In the next window, once enough of this one has slid out.
        fits_at = RATE_WINDOW + RATE_WINDOW * (1 - (limit - 1) / max(count, 1))
    return max(1, math.ceil(fits_at - into))


def request_authenticate(request: HttpRequest, raw: str) -> ApiToken:
    """Check the token and its rate, and act as its user for this request."""
    token = token_authenticate(raw)
    rate_check(token)
    request.user = token.user
    request.api_token = token
    return token


def bearer_of(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None without one."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    return raw.strip() if scheme.lower() == "bearer" else None


def refusal_response(exc: Exception) -> HttpResponse:
    """The JSON answer the API gives to a refused token or too many requests."""
    if isinstance(exc, RateLimited):
        response = JsonResponse({"detail": str(exc)}, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response
    response = JsonResponse(
        {"detail": "This API token is unknown, revoked or expired."}, status=401
    )
    response["WWW-Authenticate"] = 'Bearer realm="medannot"'
    return response


def token_or_session(view=None, *, check_csrf: bool = True):
    """Lets a page endpoint (the tus upload, upload batches) take an API token as well as a
    session. With a token the request is its user's and needs no CSRF token (no browser
    sends it by itself); without one, Django's CSRF check runs as the middleware would
    (`check_csrf=False`: the view runs it itself, as the tus endpoints do)."""
    if view is None:
        return functools.partial(token_or_session, check_csrf=check_csrf)

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        raw = bearer_of(request)
        if raw is not None:
            try:
                request_authenticate(request, raw)
            except (TokenRefused, RateLimited) as exc:
                return refusal_response(exc)
            request._dont_enforce_csrf_checks = True
        elif check_csrf and (refused := _csrf_refusal(request)) is not None:
            return refused
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapper)


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    return CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})
