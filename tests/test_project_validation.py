"""Slide settings are judged by the patch code alone: what it refuses, no form or admin saves."""

import re

from django.contrib.auth import get_user_model
from django.urls import reverse

from annotations.forms import ProjectSettingsForm
from imaging.patches import PATCH_SETTING_RANGES

FORM = {
    "system": "",
    "instruction": "Describe the {organ} specimen.",
    "target_mpp": "0.5",
    "patch_size": "512",
    "max_patches": "40",
}


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
