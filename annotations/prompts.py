"""Prompts: defaults per modality, per-project versioned templates, manifest fields, and
sanitising of user text so it can neither break nor steer the chat template."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULTS: dict[str, tuple[str, str]] = {
    "pathology": (
        "",  # Google's whole-slide recipe uses no system prompt
        "You are an expert pathologist. Write a microscopic description of this specimen"
        "{organ_clause}: tissue type, architecture, cytology, notable findings, and a short "
        "impression.",
    ),
    "dermatology": (
        "You are an expert dermatologist writing a research annotation.",
        "Describe this skin lesion{site_clause}: morphology, colour, border, size and "
        "distribution, then give a short differential diagnosis.",
    ),
    "other": (
        "You are an expert radiologist and clinician writing a research annotation.",
        "Describe this medical image: what it shows, notable findings, and a short impression.",
    ),
}

# Gemma's control tokens, and MedGemma's thinking markers. User text must not contain them
# verbatim: a note with "<start_of_image>" would otherwise add an image slot or a turn.
_CONTROL = re.compile(
    r"<\s*/?\s*(start_of_image|end_of_image|image_soft_token|start_of_turn|end_of_turn|bos|eos|"
    r"pad|unk|mask|unused\d+)\s*>",
    re.IGNORECASE,
)


def sanitize(text: str) -> str:
    """Neutralise control tokens in user text: ``<start_of_image>`` → ``‹start_of_image›``."""
    return _CONTROL.sub(lambda m: f"‹{m.group(1)}›", text)


@dataclass(frozen=True)
class Prompt:
    system: str
    instruction: str
    version: int  # 0: the modality's built-in default


class _Fields(dict):
    """Template fields: a missing one renders as 'not given' instead of failing the draft."""

    def __missing__(self, key: str) -> str:
        return "not given"


def template_fields(template: str) -> list[str]:
    """Names of the `{field}` placeholders in a template (raises ValueError if malformed)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def validate_template(template: str) -> None:
    """Raise ValueError if a template could not be rendered for every task."""
    try:
        names = template_fields(template)
        if any(not name.isidentifier() for name in names) or "" in [
            n for _, n, _, _ in string.Formatter().parse(template) if n is not None
        ]:
            raise ValueError("use simple placeholders such as {organ}")
        render(template, {})
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"the template cannot be filled in: {exc}") from None


def render(template: str, fields: Mapping[str, object]) -> str:
    """Fill `{field}` placeholders from manifest fields; every value is sanitised."""
    values = _Fields({k: sanitize(str(v)) for k, v in fields.items() if v not in (None, "")})
    organ, site = values.get("organ"), values.get("site")
    values.setdefault("organ_clause", f" ({organ})" if organ else "")
    values.setdefault("site_clause", f" on the {site}" if site else "")
    return sanitize(string.Formatter().vformat(template, (), values))


def prompt_for(
    *, modality: str, template=None, fields: Mapping[str, object] | None = None
) -> Prompt:
    """The rendered prompt of a task: the project's newest template, or the default."""
    if template is not None:
        system, instruction, version = template.system, template.instruction, template.version
    else:
        system, instruction = DEFAULTS.get(modality, DEFAULTS["other"])
        version = 0
    fields = fields or {}
    return Prompt(
        system=render(system, fields).strip(),
        instruction=render(instruction, fields).strip(),
        version=version,
    )
