"""Exports of validated labels. Rows stream from the database: memory stays flat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from annotations.models import Label, Project
from annotations.notice import AI_NOTICE
from annotations.regions import feature_collection
from imaging.inspect import reviewer_properties


def label_rows(project: Project) -> Iterator[dict[str, Any]]:
    labels = (
        Label.objects.filter(task__project=project)
        .select_related("task__image", "draft__prompt_template", "reviewer")
        .order_by("task_id", "id")
    )
    for label in labels.iterator(chunk_size=500):
        image, draft = label.task.image, label.draft
        yield {
            "task_id": label.task_id,
            "image_file_name": image.original_name,
            "image_sha256": image.sha256,
            "image_format": image.format,
            # Allowlisted properties only: free-text slide properties can carry identifiers.
            "image_properties": reviewer_properties(image),
            "decision": label.decision,
            "final_text": label.text,
            "reason": label.reason,
            "category": label.category,
            # Distance from the draft to final_text: 0 for an accept, null for a reject.
            "edit_chars": label.edit_chars,
            "edit_words": label.edit_words,
            "time_on_task_ms": label.time_on_task_ms,
            "fast_accept": label.fast_accept,
            "reviewer": label.reviewer.get_username(),
            "labelled_at": label.created_at.isoformat(),
            "updated_at": label.updated_at.isoformat(),
            "draft_id": draft.pk,
            "draft_text": draft.text,
            "draft_created_at": draft.created_at.isoformat(),
            "model_id": draft.model_id,
            "model_revision": draft.model_revision,
            "backend": draft.backend,
            "prompt": draft.prompt,
            "prompt_version": draft.prompt_template.version if draft.prompt_template else 0,
            "draft_truncated": draft.truncated,
            # The reviewer's region pointers, GeoJSON in level-0 pixels (QuPath opens it).
            "regions": feature_collection(label.regions),
            # The patches the model was given for the draft (level-0 pixels too).
            "draft_regions": draft.regions,
            "task_metadata": label.task.metadata,
            "generation": draft.generation,
            "draft_notice": AI_NOTICE,
        }


def jsonl_lines(project: Project) -> Iterator[str]:
    for row in label_rows(project):
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(project: Project, out: IO[str]) -> int:
    count = 0
    for line in jsonl_lines(project):
        out.write(line)
        count += 1
    return count
