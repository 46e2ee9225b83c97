"""Data backfills that a migration calls with its historical models (`apps.get_model`).

Plain functions on the model classes given, so a migration never imports services.
"""

from __future__ import annotations

import itertools
from collections import Counter

from django.db.models import Exists, OuterRef, Subquery

from annotations import agreement
from annotations.textdiff import word_distance


def review_states_backfill(task_model, label_model) -> int:
    """Give existing tasks their review state from their labels. Every project read each
    task once before double reading came, so a task with a label is final and one without
    is open. Returns how many tasks became final."""
    labels = label_model.objects.filter(task=OuterRef("pk"))
    labelled = Exists(labels)
    finals, opened = {"review_state": "final"}, {"review_state": "open"}
    if any(f.name == "outcome" for f in task_model._meta.fields):  # from migration 0012 on
        first = labels.order_by("created_at", "id").values("decision")[:1]
        finals["outcome"], opened["outcome"] = Subquery(first), ""
    final = task_model.objects.filter(labelled).update(**finals)
    task_model.objects.filter(~labelled).exclude(review_state="open").update(**opened)
    return final


def outcomes_backfill(connection) -> None:
    """The review outcome moves out of the drafting state: decided tasks become drafted
    again, and final tasks get their outcome, the adjudication's decision or else their
    first reading's (they agree, or were read once). Plain SQL on the migration's
    connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotations_task SET state = 'drafted' "
            "WHERE state IN ('accepted', 'edited', 'rejected')"
        )
        cursor.execute(
            """
            UPDATE annotations_task t SET outcome = COALESCE(
                (SELECT a.decision FROM annotations_adjudication a WHERE a.task_id = t.id),
                (SELECT l.decision FROM annotations_label l WHERE l.task_id = t.id
                 ORDER BY l.created_at, l.id LIMIT 1),
                '')
            WHERE t.review_state = 'final'
            """
        )
        # Final with nothing to say what: open again (cannot happen, but the constraint
        # that follows must hold).
        cursor.execute(
            "UPDATE annotations_task SET review_state = 'open' "
            "WHERE review_state = 'final' AND outcome = ''"
        )


def agreement_cells_recount(project, label_model, cell_model) -> None:
    """Compute `project`'s agreement cells from its labels, in one pass in task order, and
    store them in place of those kept (call in a transaction)."""
    cells: Counter = Counter()
    if project.readings_per_task > 1:
        labels = (
            label_model.objects.filter(task__project_id=project.pk)
            .order_by("task_id", "created_at", "id")
            .values_list("task_id", "decision", "text")
        )
        for _, rows in itertools.groupby(labels.iterator(chunk_size=2000), key=lambda r: r[0]):
            readings = [(decision, text) for _, decision, text in rows]
            cells.update(
                agreement.task_cells(
                    readings, wanted=project.readings_per_task, distance=word_distance
                )
            )
    cell_model.objects.filter(project_id=project.pk).delete()
    cell_model.objects.bulk_create(
        cell_model(project_id=project.pk, key=key, value=n) for key, n in cells.items() if n
    )
