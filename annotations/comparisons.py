"""Blind redraft comparisons: which prompt version drafts better, judged on the same images.

An admin picks a candidate prompt version and a sample size; a random sample of the
project's drafted tasks (seeded, the seed recorded) is redrafted with it by the drafting
worker. A candidate draft is a `ComparisonDraft`, never one of the task's drafts: the task's
current draft, labels, review state and exports do not see it. Readers are served the
candidate drafts in their claimed queue as sentinels are, blind: the page is the task's
page with the candidate's text in place of the draft's, nothing telling which version made
it. A decision on one is a `ComparisonReading`, never a label.

The results set the candidate's readings against the baseline's: the labels on the drafts
the sample's tasks had when it was drawn.
"""

from __future__ import annotations

import random
import secrets
import statistics
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.utils import timezone
from django.utils.crypto import salted_hmac

from annotations import messages
from annotations.insights import Estimate, mean_interval, wilson
from annotations.models import (
    Comparison,
    ComparisonDraft,
    ComparisonReading,
    ComparisonState,
    Decision,
    Draft,
    Label,
    Project,
    PromptTemplate,
    ReviewState,
    SentinelReading,
    Task,
    TaskState,
)
from annotations.queues import COMPARISON_DRAFT_TASK, GPU_QUEUE
from annotations.rouge import rouge_l
from annotations.services import audit_record
from annotations.textdiff import word_distance

MAX_SAMPLE = 500
# The share of a reader's queue items drawn from an open comparison's candidate drafts.
COMPARISON_SHARE = 0.25


def comparison_sample(task_ids: list[int], *, size: int, seed: int) -> list[int]:
    """`size` of `task_ids` drawn at random with `seed`: the same seed and tasks draw the
    same sample, so the recorded seed replays it."""
    ordered = sorted(task_ids)
    return sorted(random.Random(seed).sample(ordered, min(size, len(ordered))))


def comparison_start(
    *,
    project: Project,
    prompt_template: PromptTemplate,
    model_revision: str,
    sample_size: int,
    actor: AbstractBaseUser | None = None,
    seed: int | None = None,
) -> Comparison:
    """Start a blind comparison: draw the sample among the project's drafted tasks, make
    their (queued) candidate drafts, and queue each for the drafting worker once this
    commits. ValueError says what is wrong."""
    if prompt_template.project_id != project.pk:
        raise ValueError("The prompt version is not one of this project's.")
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise ValueError(f"Pick a sample of 1 to {MAX_SAMPLE} tasks.")
    model_revision = model_revision.strip()
    seed = secrets.randbits(62) if seed is None else seed
    drafted = Task.objects.filter(project=project, state=TaskState.DRAFTED)
    sample = comparison_sample(
        list(drafted.values_list("id", flat=True)), size=sample_size, seed=seed
    )
    if not sample:
        raise ValueError("No task of this project has a draft yet: nothing to compare.")
    newest = Draft.objects.filter(task=OuterRef("pk")).order_by("-created_at", "-id")
    baselines = dict(
        Task.objects.filter(pk__in=sample)
        .annotate(baseline=Subquery(newest.values("pk")[:1]))
        .values_list("pk", "baseline")
    )
    with transaction.atomic():
        comparison = Comparison.objects.create(
            project=project,
            prompt_template=prompt_template,
            model_revision=model_revision,
            sample_size=sample_size,
            seed=seed,
            created_by=actor,
        )
        drafts = ComparisonDraft.objects.bulk_create(
            ComparisonDraft(comparison=comparison, task_id=pk, baseline_id=baselines[pk])
            for pk in sample
        )
        Project.objects.filter(pk=project.pk).update(comparison_open=True)
        audit_record(
            action="comparison.start",
            actor=actor,
            project=project,
            after={
                "comparison": comparison.pk,
                "prompt_version": prompt_template.version,
                "model_revision": model_revision,
                "sample_size": sample_size,
                "seed": seed,
                "tasks": sample,
            },
        )
        ids = [d.pk for d in drafts]
        # After commit: the worker must find them queued. What the broker does not take
        # stays pending, for the sweep (`comparison_drafts_sweep`) to send.
        transaction.on_commit(lambda: comparison_drafts_send(ids), robust=True)
    return comparison


def comparison_drafts_send(draft_ids: list[int]) -> int:
    """Send the drafting messages of candidate drafts, clear their pending marks and note
    when they went, in one UPDATE; return how many went. Never raises: once the broker
    fails, the rest stay pending."""
    sent = messages.send_many(
        COMPARISON_DRAFT_TASK, args=[[pk] for pk in draft_ids], queue=GPU_QUEUE
    )
    if sent:
        ComparisonDraft.objects.filter(pk__in=draft_ids[:sent]).update(
            message_pending=False, sent_at=timezone.now()
        )
    return sent


def comparison_drafts_sweep(*, lease_seconds: int, limit: int = 1000) -> int:
    """Send again the candidate drafts of open comparisons still queued: those the broker
    never took (it was down when the comparison started), and those sent more than a lease
    ago (the message was lost: a broker restarted without its queue). A duplicate finds the
    draft drafted and does nothing. Returns how many were sent."""
    cutoff = timezone.now() - timedelta(seconds=lease_seconds)
    waiting = list(
        ComparisonDraft.objects.filter(state=ComparisonState.QUEUED, comparison__open=True)
        .filter(Q(message_pending=True) | Q(sent_at__lt=cutoff))
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    return comparison_drafts_send(waiting) if waiting else 0


def comparison_close(*, comparison: Comparison, actor: AbstractBaseUser | None = None) -> None:
    """Stop serving a comparison's drafts; its readings and results stay."""
    with transaction.atomic():
        if not Comparison.objects.filter(pk=comparison.pk, open=True).update(open=False):
            return
        still = Comparison.objects.filter(project_id=comparison.project_id, open=True).exists()
        Project.objects.filter(pk=comparison.project_id).update(comparison_open=still)
        audit_record(
            action="comparison.close",
            actor=actor,
            project=comparison.project,
            after={"comparison": comparison.pk},
        )


# The worker's writes ------------------------------------------------------------------------


def comparison_draft_record(*, draft_id: int, fields: dict) -> bool:
    """Store a candidate draft's text (and how it was made), once: a redelivered message
    finds it drafted and changes nothing. ROUGE-L against the manifest's reference, where
    the task has one. Whether this call stored it."""
    draft = ComparisonDraft.objects.select_related("task").get(pk=draft_id)
    text = fields["text"].strip()
    if not text:
        return comparison_draft_fail(draft_id=draft_id, error="the model returned an empty draft")
    reference = str((draft.task.metadata or {}).get("reference") or "").strip()
    stored = ComparisonDraft.objects.filter(pk=draft_id, state=ComparisonState.QUEUED).update(
        state=ComparisonState.DRAFTED,
        text=text,
        backend=fields.get("backend", ""),
        model_id=fields.get("model_id", ""),
        model_revision=fields.get("model_revision", ""),
        prompt=fields.get("prompt", ""),
        tokens_in=fields.get("tokens_in", 0),
        tokens_out=fields.get("tokens_out", 0),
        seconds=fields.get("seconds", 0.0),
        truncated=fields.get("truncated", False),
        rouge_reference=rouge_l(text, reference) if reference else None,
        drafted_at=timezone.now(),
    )
    return bool(stored)


def comparison_draft_fail(*, draft_id: int, error: str) -> bool:
    """A candidate draft that could not be made: shown with the comparison, never served."""
    failed = ComparisonDraft.objects.filter(pk=draft_id, state=ComparisonState.QUEUED)
    return bool(failed.update(state=ComparisonState.FAILED, error=error[:2000]))


# The queue ----------------------------------------------------------------------------------


def _draw(project_id: int, reviewer_id: int, n: int) -> float:
    """A number in [0, 1) for the reader's n-th queue item, as sentinels draw theirs
    (another salt: the two draws are independent)."""
    digest = salted_hmac("annotations.comparisons", f"{project_id}:{reviewer_id}:{n}").digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _unread(project: Project, reviewer: AbstractBaseUser):
    read = ComparisonReading.objects.filter(draft=OuterRef("pk"), reviewer=reviewer)
    return (
        ComparisonDraft.objects.filter(
            comparison__project=project, comparison__open=True, state=ComparisonState.DRAFTED
        )
        .exclude(Exists(read))
        .select_related("task")
    )


def comparison_for(
    *, project: Project, reviewer: AbstractBaseUser, always: bool = False
) -> ComparisonDraft | None:
    """Whether the reader's next queue item is a candidate draft, and which (one they have
    not read, of an open comparison): with COMPARISON_SHARE of the items, or `always` (their
    queue is done). The draw depends on how many items they decided in the project, so a
    reload draws the same again."""
    if not project.comparison_open:
        return None
    if not always:
        decided = (
            Label.objects.filter(reviewer=reviewer, task__project=project).count()
            + SentinelReading.objects.filter(reviewer=reviewer, sentinel__project=project).count()
            + ComparisonReading.objects.filter(
                reviewer=reviewer, draft__comparison__project=project
            ).count()
        )
        if _draw(project.pk, reviewer.pk, decided) >= COMPARISON_SHARE:
            return None
    return _unread(project, reviewer).order_by("id").first()


def task_in_open_comparison(task: Task) -> bool:
    """Whether a comparison still open in the task's project has a candidate draft of it:
    then both its drafts are shown without their provenance."""
    return ComparisonDraft.objects.filter(task=task, comparison__open=True).exists()


def comparison_pending(
    *, project_id: int, draft_id: int | None, reviewer, task: Task | None = None
) -> ComparisonDraft | None:
    """The candidate draft `draft_id` of the project (standing in for `task`'s draft, if
    given) if `reviewer` has not read it yet; else None."""
    if not draft_id:
        return None
    read = ComparisonReading.objects.filter(draft=OuterRef("pk"), reviewer=reviewer)
    found = ComparisonDraft.objects.filter(
        pk=draft_id, comparison__project_id=project_id, state=ComparisonState.DRAFTED
    ).exclude(Exists(read))
    if task is not None:
        found = found.filter(task=task)
    return found.select_related("task").first()


def comparison_reading_of_form(*, task: Task, reviewer, client_id) -> ComparisonReading | None:
    """The reading the decision form `client_id` recorded on a candidate draft of `task`:
    the same form posted again is answered with it, never made a label."""
    if client_id is None:
        return None
    return ComparisonReading.objects.filter(
        draft__task=task, reviewer=reviewer, client_id=client_id
    ).first()


def validated_text(task: Task) -> str:
    """The task's validated text: its final label's kept text (the adjudication's, where
    one settled it); blank while it has none, or when the draft was rejected."""
    if task.review_state != ReviewState.FINAL or task.outcome == Decision.REJECTED:
        return ""
    adjudication = getattr(task, "adjudication", None) if task.pk else None
    if adjudication is not None:
        return adjudication.text
    kept = sorted((x for x in task.labels.all() if x.text), key=lambda x: (x.created_at, x.pk))
    return kept[0].text if kept else ""


def comparison_reading_record(
    *,
    draft: ComparisonDraft,
    reviewer: AbstractBaseUser,
    decision: str,
    text: str = "",
    category: str = "",
    client_id: uuid.UUID | None = None,
) -> ComparisonReading:
    """Record a reader's decision on a candidate draft, once. No label is written and the
    task is not touched; the audit row names no task (its history says nothing of it)."""
    if decision not in Decision.values:
        raise ValueError(f"unknown decision {decision!r}")
    final = {Decision.ACCEPTED: draft.text, Decision.EDITED: text.strip()}.get(decision, "")
    if decision == Decision.EDITED and not final:
        raise ValueError("An edited reading needs text.")
    validated = validated_text(draft.task)
    with transaction.atomic():
        reading, created = ComparisonReading.objects.get_or_create(
            draft=draft,
            reviewer=reviewer,
            defaults={
                "decision": decision,
                "category": "" if decision == Decision.ACCEPTED else category,
                "text": final,
                "edit_words": word_distance(draft.text, final) if final else None,
                "rouge_l": rouge_l(draft.text, validated) if validated else None,
                "client_id": client_id,
            },
        )
        if created:
            audit_record(
                action="comparison.read",
                actor=reviewer,
                project=draft.task.project,
                after={"comparison": draft.comparison_id, "draft": draft.pk, "decision": decision},
            )
    return reading


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmResult:
    """One arm of a comparison on its sample: readings, acceptance (Wilson), the median
    edit in words, and ROUGE-L of its drafts against the tasks' validated texts."""

    name: str
    readings: int
    accepted: int
    acceptance: Estimate
    median_edit_words: float | None
    rouge: Estimate
    categories: list[tuple[str, int]]

    def cells(self) -> list[str]:
        median = self.median_edit_words
        return [
            self.name,
            str(self.readings),
            self.acceptance.as_percent(),
            "—" if median is None else f"{median:.1f}",
            ", ".join(f"{k}: {n}" for k, n in self.categories) or "—",
            self.rouge.as_text(scale=100),
        ]


RESULT_COLUMNS = [
    "Arm",
    "Readings",
    "Acceptance rate (95% interval)",
    "Median edit (words)",
    "Correction categories",
    "ROUGE-L vs validated (95% interval)",
]


def _arm(name: str, decisions: list[tuple[str, int | None, str]], scores: list[float]):
    accepted = sum(1 for d, _, _ in decisions if d == Decision.ACCEPTED)
    edits = [w for d, w, _ in decisions if d != Decision.REJECTED and w is not None]
    categories = Counter(c for _, _, c in decisions if c)
    return ArmResult(
        name=name,
        readings=len(decisions),
        accepted=accepted,
        acceptance=wilson(accepted, len(decisions)),
        median_edit_words=statistics.median(edits) if edits else None,
        rouge=mean_interval(sum(scores), sum(s * s for s in scores), len(scores)),
        categories=sorted(categories.items(), key=lambda kv: (-kv[1], kv[0])),
    )


def comparison_results(comparison: Comparison) -> list[ArmResult]:
    """The baseline's arm (the labels on the sample's drafts when it was drawn) and the
    candidate's (the readings of its drafts), on the same tasks. Reads the sample only."""
    drafts = list(
        ComparisonDraft.objects.filter(comparison=comparison)
        .select_related("task", "baseline", "task__adjudication")
        .prefetch_related("task__labels")
    )
    baseline_ids = [d.baseline_id for d in drafts]
    labels = Label.objects.filter(draft_id__in=baseline_ids).values_list(
        "decision", "edit_words", "category"
    )
    readings = ComparisonReading.objects.filter(draft__comparison=comparison).values_list(
        "decision", "edit_words", "category"
    )
    base_scores, candidate_scores = [], []
    for draft in drafts:  # the same tasks on both sides: those with both drafts and a text
        validated = validated_text(draft.task)
        if validated and draft.state == ComparisonState.DRAFTED:
            base_scores.append(rouge_l(draft.baseline.text, validated))
            candidate_scores.append(rouge_l(draft.text, validated))
    candidate = f"candidate (prompt v{comparison.prompt_template.version})"
    return [
        _arm("baseline (the tasks' drafts)", list(labels), base_scores),
        _arm(candidate, list(readings), candidate_scores),
    ]


def project_comparisons(project: Project):
    """The project's comparisons, newest first, with their drafts' states counted."""
    return (
        Comparison.objects.filter(project=project)
        .select_related("prompt_template", "created_by")
        .annotate(
            n_drafted=Count("drafts", filter=Q(drafts__state=ComparisonState.DRAFTED)),
            n_failed=Count("drafts", filter=Q(drafts__state=ComparisonState.FAILED)),
            n_queued=Count("drafts", filter=Q(drafts__state=ComparisonState.QUEUED)),
        )
        .order_by("-id")
    )
