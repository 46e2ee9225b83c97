"""The drafting backend interface: plain dataclasses in and out, no ORM objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image as PILImage

# MedGemma 1.5 may think aloud before answering: <unused94>trace<unused95>answer.
THOUGHT_START, THOUGHT_END = "<unused94>", "<unused95>"


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
    """What the drafting loop calls. A batch is prepared (CPU work: images, tokens) while
    the previous one generates. Both backends report a failed image the same way: a
    ``BackendError`` in that request's slot of the results, never a failed batch. A raised
    ``BackendError`` means the whole batch failed (out of memory: the loop halves it)."""

    name: str
    model_id: str
    model_revision: str

    def prepare(self, requests: Sequence[DraftRequest]) -> Any: ...

    def generate(self, prepared: Any) -> list[DraftResult | BackendError]: ...


def draft_one(backend: DraftingBackend, request: DraftRequest) -> DraftResult:
    """One request's draft, or its BackendError raised."""
    (result,) = backend.generate(backend.prepare([request]))
    if isinstance(result, BackendError):
        raise result
    return result


def validate_request(request: DraftRequest) -> None:
    """Reject requests that cannot work, before they reach a model or a server."""
    if request.max_new_tokens < 1:
        raise BackendError("max_new_tokens must be at least 1", permanent=True)
    for i, image in enumerate(request.images):
        if not isinstance(image, PILImage.Image):
            kind = type(image).__name__
            raise BackendError(f"image {i} is a {kind}, not a PIL image", permanent=True)
        if image.width < 1 or image.height < 1:
            raise BackendError(f"image {i} is empty ({image.width}x{image.height})", permanent=True)
        try:
            image.load()  # PIL decodes lazily: surface truncated or corrupt files here
        except Exception as exc:
            raise BackendError(f"image {i} cannot be decoded: {exc}", permanent=True) from exc
