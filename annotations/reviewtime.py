"""Time on task: the decision form carries its render time, signed, so that a posted value
cannot be forged; the time from that render to the decision is the reading's time on task."""

from __future__ import annotations

import time

from django.core import signing

_SALT = "medannot.review.rendered_at"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def rendered_at_sign(*, task_id: int, user_id: int, now_ms: int | None = None) -> str:
    """A token saying this form was rendered now, for this task and this reviewer."""
    stamp = _now_ms() if now_ms is None else now_ms
    return signing.dumps([task_id, user_id, stamp], salt=_SALT, compress=False)


def time_on_task_ms(token: str, *, task_id: int, user_id: int) -> int | None:
    """Milliseconds since the form was rendered; None for a missing or forged token, one
    minted for another task or reviewer, or one from the future."""
    if not token:
        return None
    try:
        signed_task, signed_user, stamp = signing.loads(token, salt=_SALT)
    except (signing.BadSignature, TypeError, ValueError):
        return None
    if (signed_task, signed_user) != (task_id, user_id) or not isinstance(stamp, int):
        return None
    elapsed = _now_ms() - stamp
    return elapsed if elapsed >= 0 else None
