"""Slide settings are judged by the patch code alone: what it refuses, no form or admin saves."""

import re

from django.contrib.auth import get_user_model
from django.urls import reverse

from annotations.forms import ProjectSettingsForm
from imaging.patches import PATCH_SETTING_RANGES
from tests.factories import SETTINGS_FORM

FORM = SETTINGS_FORM


def test_the_settings_form_refuses_a_resolution_the_patch_code_refuses(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, FORM | {"target_mpp": "500"})
    assert response.status_code == 200
    assert "less than or equal to 100" in response.content.decode()
    people.project.refresh_from_db()
    assert people.project.slide_settings == {}
    assert client.get(url).status_code == 200
    assert client.get(reverse("project-detail", args=[people.project.pk])).status_code == 200


def test_the_form_bounds_are_the_patch_code_ranges():
    form = ProjectSettingsForm()
    for name in ("target_mpp", "patch_size", "max_patches"):
        lo, hi = PATCH_SETTING_RANGES[name]
        assert (form.fields[name].min_value, form.fields[name].max_value) == (lo, hi)


def _admin_form(client, url) -> dict:
    """The change form's fields as the page has them (management forms included)."""
    html = client.get(url).content.decode()
    data = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name = re.search(r'\sname="([^"]+)"', tag)
        if not name or 'type="submit"' in tag or 'type="checkbox"' in tag:
            continue
        value = re.search(r'value="([^"]*)"', tag)
        data[name.group(1)] = value.group(1) if value else ""
    for name, body in re.findall(r'<select[^>]*\sname="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        selected = re.search(r'<option value="([^"]*)"[^>]*selected', body)
        data[name] = selected.group(1) if selected else ""
    return data


def test_the_admin_refuses_slide_settings_the_patch_code_refuses(people, client_for):
    superuser = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client = client_for(superuser)
    url = reverse("admin:annotations_project_change", args=[people.project.pk])
    data = _admin_form(client, url)
    assert "memberships-TOTAL_FORMS" in data
    data |= {
        "name": people.project.name,
        "modality": people.project.modality,
        "description": "",
        "slide_settings": '{"patch_size": 5, "max_patches": 100000}',
    }
    response = client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    assert "patch setting patch_size must be in 64..4096" in response.content.decode()
    people.project.refresh_from_db()
    assert people.project.slide_settings == {}
    page = client_for(people.admin).get(reverse("project-settings", args=[people.project.pk]))
    assert page.status_code == 200
    detail = client_for(people.admin).get(reverse("project-detail", args=[people.project.pk]))
    assert detail.status_code == 200


def test_the_admin_saves_good_slide_settings(people, client_for):
    superuser = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client = client_for(superuser)
    url = reverse("admin:annotations_project_change", args=[people.project.pk])
    data = _admin_form(client, url) | {
        "name": people.project.name,
        "modality": people.project.modality,
        "slide_settings": '{"patch_size": 448}',
    }
    response = client.post(url, data)
    assert response.status_code == 302
    people.project.refresh_from_db()
    assert people.project.slide_settings == {"patch_size": 448}


def test_slide_settings_stored_before_the_check_go_back_to_the_defaults(people, client_for):
    """Migration 0006: a project the old admin gave {"patch_size": 5} loads again."""
    import importlib

    from django.apps import apps as django_apps

    from annotations.models import AuditEvent, Project

    migration = importlib.import_module("annotations.migrations.0006_reset_invalid_slide_settings")
    bad = {"patch_size": 5, "max_patches": 100000}
    Project.objects.filter(pk=people.project.pk).update(slide_settings=bad)
    Project.objects.filter(pk=people.other_project.pk).update(slide_settings={"patch_size": 512})
    migration.reset_invalid(django_apps, None)
    people.project.refresh_from_db(), people.other_project.refresh_from_db()
    assert people.project.slide_settings == {}
    assert people.other_project.slide_settings == {"patch_size": 512}
    event = AuditEvent.objects.filter(project=people.project).latest("id")
    assert event.before == bad and "patch_size" in event.reason
    url = reverse("project-settings", args=[people.project.pk])
    assert client_for(people.admin).get(url).status_code == 200
