"""Data backfills that a migration calls with its historical models (`apps.get_model`).

Plain functions on the model classes given, so a migration never imports services.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef


def review_states_backfill(task_model, label_model) -> int:
    """Give existing tasks their review state from their labels. Every project read each
    task once before double reading came, so a task with a label is final and one without
    is open. Returns how many tasks became final."""
    labelled = Exists(label_model.objects.filter(task=OuterRef("pk")))
    final = task_model.objects.filter(labelled).update(review_state="final")
    task_model.objects.filter(~labelled).exclude(review_state="open").update(review_state="open")
    return final
