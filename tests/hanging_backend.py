"""A drafting backend that never finishes, for the time-limit tests (chosen by dotted path
with MEDANNOT_BACKEND in a worker the tests start)."""

from __future__ import annotations

import time


class Hangs:
    def __init__(self, model: str, **options) -> None:
        pass

    def prepare(self, requests):
        return list(requests)

    def generate(self, prepared):
        while True:
            time.sleep(1)

    def draft_many(self, requests):
        return self.generate(requests)
