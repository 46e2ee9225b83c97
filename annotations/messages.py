"""Messages to the worker, sent by task name: the web never imports the worker."""

from __future__ import annotations

import logging

from celery import current_app

log = logging.getLogger(__name__)

# One quick retry, then give up: with the broker down, a web request must not hang on it.
# What was not sent is sent later (the drafting outbox and its sweep; previews render on
# the first page view instead).
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def send(name: str, *, args: list, queue: str) -> bool:
    """Send task `name` to `queue`; False (logged) when the broker cannot take it.

    No time limits go in the message (an explicit None clears the defaults that send_task
    would take from the sender's settings): the worker's own settings rule.
    """
    try:
        current_app.send_task(
            name,
            args=args,
            queue=queue,
            retry=True,
            retry_policy=RETRY_POLICY,
            time_limit=None,
            soft_time_limit=None,
        )
    except Exception:
        log.warning("%s%s: the message broker is unreachable", name, tuple(args), exc_info=True)
        return False
    return True


def send_many(name: str, *, args: list[list], queue: str) -> int:
    """Send task `name` once per entry of `args`, over one producer; return how many went.

    Stops at the first failure (logged): with the broker down, each further message would
    wait out the retry policy again.
    """
    sent = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for one in args:
                current_app.send_task(
                    name,
                    args=one,
                    queue=queue,
                    retry=True,
                    retry_policy=RETRY_POLICY,
                    time_limit=None,
                    soft_time_limit=None,
                    producer=producer,
                )
                sent += 1
    except Exception:
        log.warning(
            "%s: the message broker is unreachable (%d of %d sent)",
            name,
            sent,
            len(args),
            exc_info=True,
        )
    return sent
