"""A session ends after MEDANNOT_SESSION_IDLE_MINUTES without a request; use keeps it alive,
at the cost of at most one session write a minute."""

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from medannot.middleware import REFRESH_SECONDS
from tests.factories import make_drafted_task


class Clock:
    """django.utils.timezone.now, moved forward by hand."""

    def __init__(self, monkeypatch):
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)

    def advance(self, **delta):
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


def _expiry(client):
    return Session.objects.get(session_key=client.session.session_key).expire_date


def test_the_idle_limit_comes_from_settings(settings):
    assert settings.SESSION_COOKIE_AGE == settings.MEDANNOT_SESSION_IDLE_MINUTES * 60
    assert not settings.SESSION_SAVE_EVERY_REQUEST  # the review path pays no write a request


def test_an_idle_session_ends_and_the_next_page_asks_to_log_in(people, client_for, clock, settings):
    client = client_for(people.pathologist)
    assert client.get(reverse("project-list")).status_code == 200
    clock.advance(minutes=settings.MEDANNOT_SESSION_IDLE_MINUTES, seconds=1)
    response = client.get(reverse("project-detail", args=[people.project.pk]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_activity_keeps_the_session_alive(people, client_for, clock, settings):
    client = client_for(people.pathologist)
    step = settings.MEDANNOT_SESSION_IDLE_MINUTES - 1
    for _ in range(5):  # five idle gaps just short of the limit: longer than it in all
        clock.advance(minutes=step)
        assert client.get(reverse("project-list")).status_code == 200


def test_the_expiry_is_pushed_back_at_most_once_a_minute(people, client_for, clock):
    client = client_for(people.pathologist)
    client.get(reverse("project-list"))
    first = _expiry(client)
    clock.advance(seconds=REFRESH_SECONDS - 5)
    client.get(reverse("project-list"))
    assert _expiry(client) == first  # no session write
    clock.advance(seconds=10)
    client.get(reverse("project-list"))
    assert _expiry(client) == first + timedelta(seconds=REFRESH_SECONDS + 5)


def test_a_visitor_who_is_not_logged_in_gets_no_session(db, client):
    client.get(reverse("login"))
    assert not Session.objects.exists()


def test_an_open_page_polling_by_itself_does_not_keep_the_session_alive(
    people, client_for, clock, settings
):
    """A review page left open on an unattended workstation still logs out."""
    task = make_drafted_task(people.project)
    client = client_for(people.pathologist)
    assert client.post(reverse("review-start", args=[people.project.pk])).status_code == 302
    for _ in range(settings.MEDANNOT_SESSION_IDLE_MINUTES + 1):
        clock.advance(minutes=1)
        client.post(reverse("claim-renew", args=[task.pk]), HTTP_HX_REQUEST="true")
        client.get(reverse("project-status", args=[people.project.pk]), HTTP_HX_REQUEST="true")
    response = client.get(reverse("task-detail", args=[task.pk]))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_the_heartbeat_works_while_the_reviewer_is_active(people, client_for, clock):
    task = make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    clock.advance(minutes=1)
    response = client.post(reverse("claim-renew", args=[task.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code in {200, 204}
