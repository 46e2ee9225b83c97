"""The notice shown wherever an AI draft is shown or exported, and the terms the drafting
model is used under (shown on the project page, carried in exports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings
from django.http import HttpRequest

AI_NOTICE = (
    "AI-generated draft for research use only, to be validated by a clinician. "
    "Not a medical device; not for diagnosis or patient care."
)

# MedGemma is released under Google's Health AI Developer Foundations terms of use.
HAI_DEF_TERMS = "Health AI Developer Foundations terms of use"
HAI_DEF_TERMS_URL = "https://developers.google.com/health-ai-developer-foundations/terms"
# One line for export files (a header, a column or a README next to the rows).
MODEL_TERMS_NOTICE = f"MedGemma drafts are used under the {HAI_DEF_TERMS}: {HAI_DEF_TERMS_URL}"
OTHER_MODEL_TERMS = "Drafts are used under the terms on the drafting model's card."


@dataclass(frozen=True)
class ModelTerms:
    """The drafting model as users see it: its name and the terms it is used under."""

    name: str
    terms: str
    terms_url: str


def model_terms(model: str) -> ModelTerms:
    """The terms of `model` (a hub id or a local folder, MEDANNOT_MODEL). A local folder is
    named by its last part: the server's paths are nobody's business."""
    name = model.rstrip("/\\")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        name = PurePath(name.replace("\\", "/")).name or model
    if "medgemma" in name.lower():
        return ModelTerms(name=name, terms=HAI_DEF_TERMS, terms_url=HAI_DEF_TERMS_URL)
    return ModelTerms(name=name, terms="the terms on its model card", terms_url="")


def context(request: HttpRequest) -> dict:
    """The drafting model's terms, for the project page (a template context processor)."""
    return {"MODEL_TERMS": model_terms(settings.MEDANNOT_MODEL or "")}
