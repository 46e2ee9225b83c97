"""Default prompts per modality; a project's own prompt replaces the default."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULTS: dict[str, tuple[str, str]] = {
    "pathology": (
        "You are an expert pathologist writing a research annotation.",
        "Describe this histopathology image as a microscopic description: tissue type, "
        "architecture, cytology, notable findings, and a short impression.",
    ),
    "dermatology": (
        "You are an expert dermatologist writing a research annotation.",
        "Describe this skin lesion: morphology, colour, border, size and distribution, "
        "then give a short differential diagnosis.",
    ),
    "other": (
        "You are an expert radiologist and clinician writing a research annotation.",
        "Describe this medical image: what it shows, notable findings, and a short impression.",
    ),
}


@dataclass(frozen=True)
class Prompt:
    system: str
    instruction: str


def prompt_for(*, modality: str, system: str = "", instruction: str = "") -> Prompt:
    default_system, default_instruction = DEFAULTS.get(modality, DEFAULTS["other"])
    return Prompt(
        system=system.strip() or default_system,
        instruction=instruction.strip() or default_instruction,
    )
