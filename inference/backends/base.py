"""The drafting backend interface: plain dataclasses in and out, no ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image as PILImage

AI_NOTICE = (
    "AI-generated draft for research use only. Not a medical device; "
    "not for diagnosis or patient care."
)


@dataclass(frozen=True)
class DraftRequest:
    """One image (or a set of patches of one slide) to describe."""

    images: list[PILImage.Image]
    instruction: str
    system: str = ""
    max_new_tokens: int = 256


@dataclass(frozen=True)
class DraftResult:
    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    prompt: str
    model_id: str
    model_revision: str
    backend: str
    generation: dict[str, Any] = field(default_factory=dict)
    # MedGemma 1.5 may think aloud (<unused94>...<unused95>) before answering: kept apart.
    thinking: str = ""
    # True when generation hit max_new_tokens before a stop token.
    truncated: bool = False


class BackendError(Exception):
    """A draft could not be made. `permanent` says whether a retry could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class DraftingBackend(Protocol):
    name: str
    model_id: str
    model_revision: str

    def draft(self, request: DraftRequest) -> DraftResult: ...
