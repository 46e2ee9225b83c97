"""The drafting backend of this process, chosen from settings and loaded once, lazily.

Importing this package imports no torch: the backend class is imported by dotted path
on first use, which happens in a worker process after fork, never in the web process.
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.utils.module_loading import import_string

from inference.backends.base import BackendError, DraftingBackend, DraftRequest, DraftResult

__all__ = ["BackendError", "DraftRequest", "DraftResult", "DraftingBackend", "get_backend"]

_backend: DraftingBackend | None = None
_lock = threading.Lock()


def get_backend() -> DraftingBackend:
    """This process's backend; the model loads on the first call only."""
    global _backend
    with _lock:
        if _backend is None:
            cls = import_string(settings.MEDANNOT_BACKEND)
            _backend = cls(
                settings.MEDANNOT_MODEL,
                device=settings.MEDANNOT_DEVICE,
                max_new_tokens=settings.MEDANNOT_MAX_NEW_TOKENS,
                **settings.MEDANNOT_BACKEND_OPTIONS,
            )
        return _backend


def reset_backend() -> None:
    global _backend
    with _lock:
        _backend = None
