"""Prompt templates: plain placeholders only, and bounded sizes, however long the manifest."""

import pytest
from django.urls import reverse

from annotations import prompts, services
from annotations.forms import ProjectSettingsForm
from annotations.models import PromptTemplate
from tests.factories import SETTINGS_FORM

FORM = SETTINGS_FORM
REFUSED = ["{organ:>50000000}", "{organ!r}", "{organ.upper}", "{organ[0]}", "{}", "{0}"]


@pytest.mark.parametrize("placeholder", REFUSED)
def test_the_form_refuses_anything_but_plain_placeholders(placeholder):
    form = ProjectSettingsForm(FORM | {"instruction": f"Describe the {placeholder}."})
    assert not form.is_valid()
    assert "use plain placeholders such as {organ}" in form.errors["instruction"][0]


@pytest.mark.parametrize("placeholder", REFUSED)
def test_the_service_refuses_anything_but_plain_placeholders(people, placeholder):
    with pytest.raises(ValueError, match="use plain placeholders such as"):
        services.prompt_template_save(
            project=people.project, instruction=f"Describe the {placeholder}."
        )
    assert not PromptTemplate.objects.exists()


def test_a_huge_padding_spec_is_refused_over_http_and_builds_nothing(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, FORM | {"instruction": "Describe the {organ:>50000000}."})
    assert response.status_code == 200
    assert "use plain placeholders such as {organ}" in response.content.decode()
    assert len(response.content) < 100_000
    assert not PromptTemplate.objects.exists()


def test_a_template_longer_than_the_cap_is_refused(people):
    with pytest.raises(ValueError, match="characters long"):
        services.prompt_template_save(
            project=people.project, instruction="x" * (prompts.MAX_TEMPLATE_CHARS + 1)
        )
    form = ProjectSettingsForm(FORM | {"system": "y" * (prompts.MAX_TEMPLATE_CHARS + 1)})
    assert not form.is_valid() and "system" in form.errors


def test_a_megabyte_manifest_value_keeps_the_prompt_under_the_cap():
    template = PromptTemplate(
        system="Context: {organ} {organ}", instruction="{organ} " * 50 + "{site}", version=3
    )
    prompt = prompts.prompt_for(
        modality="pathology", template=template, fields={"organ": "x" * 1_000_000, "site": "arm"}
    )
    assert len(prompt.system) + len(prompt.instruction) <= prompts.MAX_PROMPT_CHARS
    assert "x" * prompts.MAX_FIELD_CHARS + " " in prompt.system
    assert "x" * (prompts.MAX_FIELD_CHARS + 1) not in prompt.system
    assert "x" * (prompts.MAX_FIELD_CHARS + 1) not in prompt.instruction


def test_plain_placeholders_and_literal_braces_still_render():
    text = prompts.render(
        "Describe the {organ}{organ_clause} at {site}; {{literal}} {missing}.",
        {"organ": "<start_of_image>lung", "site": ""},
    )
    assert text == (
        "Describe the ‹start_of_image›lung (‹start_of_image›lung) at not given; "
        "{literal} not given."
    )


def test_a_spec_saved_before_it_was_refused_renders_without_it():
    assert prompts.render("a {organ:>50000000} b", {"organ": "lung"}) == "a lung b"
