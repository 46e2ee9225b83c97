"""An admin edits a project's prompt (versioned) and its whole-slide patch settings."""

from django.urls import reverse

from annotations.models import AuditEvent, PromptTemplate
from tests.factories import SETTINGS_FORM

FORM = SETTINGS_FORM


def test_saving_a_changed_prompt_makes_a_new_version(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    assert "the pathology default" in client.get(url).content.decode()
    client.post(url, FORM)
    client.post(url, FORM | {"instruction": "List the findings in the {organ}."})
    client.post(url, FORM | {"instruction": "List the findings in the {organ}."})  # unchanged
    versions = list(
        PromptTemplate.objects.filter(project=people.project).values_list("version", "instruction")
    )
    assert versions == [
        (1, "Describe the {organ} specimen."),
        (2, "List the findings in the {organ}."),
    ]
    people.project.refresh_from_db()
    assert (
        people.project.slide_settings["target_mpp"],
        people.project.slide_settings["max_patches"],
    ) == (0.5, 40)
    assert AuditEvent.objects.filter(action="project.slide_settings").count() == 1


def test_a_broken_template_is_refused(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, FORM | {"instruction": "Describe the {0} and {organ!q}."})
    assert response.status_code == 200
    assert "cannot be filled in" in response.content.decode()
    assert not PromptTemplate.objects.exists()


def test_bad_slide_settings_are_refused(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, FORM | {"patch_size": "10"})
    assert "Ensure this value is greater than or equal to 64" in response.content.decode()
    people.project.refresh_from_db()
    assert people.project.slide_settings == {}
