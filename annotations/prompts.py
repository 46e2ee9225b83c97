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


# A template is filled in by the web process and the worker: plain placeholders only, and
# bounded sizes, so that neither `{organ:>50000000}` nor a long manifest value builds a huge prompt.
MAX_PROMPT_CHARS = 8000  # rendered system + instruction together
MAX_TEMPLATE_CHARS = 4000  # each template as saved
MAX_FIELD_CHARS = 500  # each manifest value as filled in
_PLAIN = "use plain placeholders such as {organ}"
_MISSING = "not given"  # a field the task's manifest lacks must not fail the draft


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(string.Formatter().parse(template))  # ValueError if braces are unbalanced


def template_fields(template: str) -> list[str]:
    """Names of the `{field}` placeholders in a template (raises ValueError if malformed)."""
    return [name for _, name, _, _ in _parse(template) if name]


def validate_template(template: str) -> None:
    """Raise ValueError unless a template is short and uses only plain `{field}` placeholders.

    Conversions (`{organ!r}`), format specs (`{organ:>9}`), attribute or index access
    (`{organ.upper}`, `{organ[0]}`) and positional fields (`{}`, `{0}`) are refused.
    """
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(
            f"the template is {len(template)} characters long; "
            f"at most {MAX_TEMPLATE_CHARS} are allowed"
        )
    try:
        parts = _parse(template)
    except ValueError as exc:
        raise ValueError(f"the template cannot be filled in: {exc}; {_PLAIN}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            if len(shown) > 40:
                shown = shown[:37] + "..."
            raise ValueError(f"the template cannot be filled in: {_PLAIN}, not {shown}")


def render(template: str, fields: Mapping[str, object]) -> str:
    """Fill `{field}` placeholders from manifest fields; every value is sanitised and cut to
    MAX_FIELD_CHARS, and the result to MAX_PROMPT_CHARS.

    Only the field name of a placeholder is used (a spec or conversion saved before they were
    refused is ignored); `{{` and `}}` are literal braces.
    """
    values = {
        str(k): sanitize(str(v))[:MAX_FIELD_CHARS] for k, v in fields.items() if v not in (None, "")
    }
    organ = values.get("organ")
    site = values.get("body_site") or values.get("site")  # a manifest's site may be a hospital
    values.setdefault("organ_clause", f" ({organ})" if organ else "")
    values.setdefault("site_clause", f" on the {site}" if site else "")
    out: list[str] = []
    size = 0
    for literal, name, _, _ in _parse(template):
        out.append(literal)
        size += len(literal)
        if name is not None:
            value = values.get(name, _MISSING)
            out.append(value)
            size += len(value)
        if size > MAX_PROMPT_CHARS:
            break
    return sanitize("".join(out)[:MAX_PROMPT_CHARS])


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
    system, instruction = render(system, fields).strip(), render(instruction, fields).strip()
    # Together within MAX_PROMPT_CHARS; the instruction keeps at least half.
    system = system[: MAX_PROMPT_CHARS - min(len(instruction), MAX_PROMPT_CHARS // 2)]
    instruction = instruction[: MAX_PROMPT_CHARS - len(system)]
    return Prompt(system=system, instruction=instruction, version=version)
