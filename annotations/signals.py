"""Logins, failed logins and logouts in the audit trail: who came in, from where, and who
was refused (the username tried, never the password)."""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

# Imported by apps.py before the models are ready: the audit model is looked up when used.


def _record(action: str, actor, after: dict) -> None:
    apps.get_model("annotations", "AuditEvent").objects.create(
        action=action, actor=actor, after=after
    )


def _address(request) -> str | None:
    # REMOTE_ADDR: the proxy in front sets it; a client-sent X-Forwarded-For could lie.
    return request.META.get("REMOTE_ADDR") if request is not None else None


@receiver(user_logged_in, dispatch_uid="audit_login")
def audit_login(sender, request, user, **kwargs) -> None:
    _record("auth.login", user, {"address": _address(request)})


@receiver(user_logged_out, dispatch_uid="audit_logout")
def audit_logout(sender, request, user, **kwargs) -> None:
    _record("auth.logout", user, {"address": _address(request)})


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already masked the password in `credentials`; only the username is kept.
    after = {"username": str(credentials.get("username", "")), "address": _address(request)}
    _record("auth.login_failed", None, after)
