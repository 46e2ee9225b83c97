"""Projects, images, tasks, drafts, labels and the audit trail.

Invariants live in the database (constraints), so a bug or a race ends in an error,
not in bad data. Task state changes go through `annotations.services`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

import imaging
from imaging.patches import PatchSettings


class Modality(models.TextChoices):
    PATHOLOGY = "pathology", "Pathology"
    DERMATOLOGY = "dermatology", "Dermatology"
    OTHER = "other", "Other 2D imaging"


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    PATHOLOGIST = "pathologist", "Pathologist"
    # Resolves disagreements between readers of a double-read project; reads no task first.
    ADJUDICATOR = "adjudicator", "Adjudicator"
    RESEARCHER = "researcher", "Researcher"


# A pathology correction taxonomy: what was wrong with a draft. The values are stored on
# labels as they are, so an admin removing one from a project leaves old labels intact.
CORRECTION_CATEGORIES = (
    "wrong diagnosis or grade",
    "missed finding",
    "hallucinated finding",
    "wrong site or laterality",
    "poor image quality",
    "wording only",
    "other",
)
WORDING_ONLY = "wording only"
MAX_CATEGORIES, MAX_CATEGORY_CHARS = 30, 80


# At most half the queue may be check drafts: more would be a test, not a workbench.
MAX_SENTINEL_SHARE = 0.5


def sentinel_share_clean(value: float) -> float:
    """The one judge of a project's share of sentinel (check) drafts: 0 to 0.5."""
    share = float(value)
    if not 0.0 <= share <= MAX_SENTINEL_SHARE:  # also refuses NaN
        raise ValueError(f"The share of check drafts goes from 0 to {MAX_SENTINEL_SHARE}.")
    return share


def default_correction_categories() -> list[str]:
    return list(CORRECTION_CATEGORIES)


def correction_categories_clean(values: list[str]) -> list[str]:
    """The one judge of a project's category list: 1 to 30 unique non-empty entries of at
    most 80 characters. Returns them stripped; ValueError says what is wrong."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("Categories are a list of texts.")
    cleaned = [v.strip() for v in values]
    if not 1 <= len(cleaned) <= MAX_CATEGORIES:
        raise ValueError(f"Give between 1 and {MAX_CATEGORIES} categories.")
    seen: set[str] = set()
    for value in cleaned:
        if not value:
            raise ValueError("A category cannot be empty.")
        if len(value) > MAX_CATEGORY_CHARS:
            raise ValueError(f"“{value[:40]}…” is longer than {MAX_CATEGORY_CHARS} characters.")
        if value.casefold() in seen:
            raise ValueError(f"“{value}” is listed twice.")
        seen.add(value.casefold())
    return cleaned


MIN_READINGS, MAX_READINGS = 1, 5
MAX_DISAGREEMENT_WORDS = 1000


def reading_settings_clean(readings_per_task: int, disagreement_words: int) -> tuple[int, int]:
    """The one judge of a project's double-reading settings; ValueError says what is wrong."""
    if not MIN_READINGS <= readings_per_task <= MAX_READINGS:
        raise ValueError(f"Readings per task go from {MIN_READINGS} to {MAX_READINGS}.")
    if not 0 <= disagreement_words <= MAX_DISAGREEMENT_WORDS:
        raise ValueError(f"The word threshold goes from 0 to {MAX_DISAGREEMENT_WORDS}.")
    return readings_per_task, disagreement_words


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    modality = models.CharField(max_length=20, choices=Modality.choices)
    description = models.TextField(blank=True)
    # Whole-slide patch selection (imaging.patches.PatchSettings); empty means the defaults.
    slide_settings = models.JSONField(default=dict, blank=True)
    # What reviewers pick from when they reject or edit a draft (correction_categories_clean).
    correction_categories = models.JSONField(default=default_correction_categories)
    # Accepts faster than this are flagged: a draft accepted unread is no validation.
    fast_accept_seconds = models.PositiveIntegerField(default=5)
    # The share of the claimed queue served as sentinels: drafts with a deliberate error.
    sentinel_share = models.FloatField(default=0.0)
    # A blind comparison is open: its candidate drafts are drawn into the claimed queue.
    # Read with the project on the decision's hot path, so a closed one costs no query.
    comparison_open = models.BooleanField(default=False)
    # Double reading: how many different readers read each task (1: a single reading), and
    # how many words two readers' edited texts may differ by and still agree.
    readings_per_task = models.PositiveSmallIntegerField(default=1)
    disagreement_words = models.PositiveIntegerField(default=5)
    # Signed validation (21 CFR Part 11 §11.50): each decision carries its reader's
    # signature; the password is asked again once per sitting of this many minutes.
    signature_required = models.BooleanField(default=False)
    signature_sitting_minutes = models.PositiveIntegerField(default=30)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(modality__in=Modality.values), name="project_modality_valid"
            ),
            models.CheckConstraint(
                condition=Q(sentinel_share__gte=0.0, sentinel_share__lte=MAX_SENTINEL_SHARE),
                name="project_sentinel_share_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    readings_per_task__gte=MIN_READINGS, readings_per_task__lte=MAX_READINGS
                ),
                name="project_readings_per_task_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # The patch code is the one judge of slide settings: what it refuses, no form saves.
        try:
            PatchSettings.from_dict(self.slide_settings)
        except ValueError as exc:
            raise ValidationError({"slide_settings": str(exc)}) from None
        try:
            self.correction_categories = correction_categories_clean(self.correction_categories)
        except ValueError as exc:
            raise ValidationError({"correction_categories": str(exc)}) from None
        try:
            self.sentinel_share = sentinel_share_clean(self.sentinel_share)
        except ValueError as exc:
            raise ValidationError({"sentinel_share": str(exc)}) from None

    def current_prompt(self) -> PromptTemplate | None:
        """The newest prompt template, or None for the modality's default."""
        return self.prompt_templates.order_by("-version").first()


class PromptTemplate(models.Model):
    """One version of a project's prompt. Never edited: a change is a new version, so every
    draft keeps pointing at the exact template that produced it."""

    # No index of its own: prompt_version_once starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="prompt_templates", db_index=False
    )
    version = models.PositiveIntegerField()
    system = models.TextField(blank=True)
    instruction = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="prompt_version_once"),
            models.CheckConstraint(condition=~Q(instruction=""), name="prompt_has_instruction"),
        ]

    def __str__(self) -> str:
        return f"{self.project} prompt v{self.version}"


class Membership(models.Model):
    # No index of its own: membership_unique starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} in {self.project}"


class ImageKind(models.TextChoices):
    SLIDE = "slide", "Whole-slide image"
    PHOTO = "photo", "Photo"


class Image(models.Model):
    """One stored file, content-addressed: the same bytes are stored once."""

    sha256 = models.CharField(max_length=64, unique=True)
    file = models.CharField(max_length=300, help_text="Path relative to MEDIA_ROOT")
    original_name = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    kind = models.CharField(max_length=10, choices=ImageKind.choices)
    format = models.CharField(max_length=20)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    levels = models.PositiveSmallIntegerField(default=1)
    mpp_x = models.FloatField(null=True, blank=True)
    mpp_y = models.FloatField(null=True, blank=True)
    # The slide properties a reviewer needs, from an allowlist: never free-text ones
    # (file names, dates, barcodes, comments can carry identifiers).
    vendor = models.CharField(max_length=40, blank=True)
    objective_power = models.FloatField(null=True, blank=True)
    level_dimensions = models.JSONField(default=list, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(width__gt=0, height__gt=0), name="image_size_pos"),
            models.CheckConstraint(condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="image_sha"),
        ]

    def __str__(self) -> str:
        return self.original_name

    # The fields that inspection fills in (imaging.ImageInfo), stored as they are.
    INFO_FIELDS = (
        "kind",
        "format",
        "width",
        "height",
        "levels",
        "mpp_x",
        "mpp_y",
        "vendor",
        "objective_power",
        "level_dimensions",
    )

    def info(self) -> imaging.ImageInfo:
        """What inspection found, for the imaging functions."""
        fields = {name: getattr(self, name) for name in self.INFO_FIELDS}
        fields["level_dimensions"] = tuple(tuple(d) for d in self.level_dimensions or ())
        return imaging.ImageInfo(**fields)

    @classmethod
    def fields_from(cls, info: imaging.ImageInfo) -> dict:
        fields = {name: getattr(info, name) for name in cls.INFO_FIELDS}
        fields["level_dimensions"] = [list(d) for d in info.level_dimensions]
        return fields


class TaskState(models.TextChoices):
    """Where a task's drafting stands. Its review is apart (`ReviewState`, `Task.outcome`):
    a decided task stays drafted, and may be drafted again."""

    NEW = "new", "New"
    QUEUED = "queued", "Queued"
    DRAFTING = "drafting", "Drafting"
    DRAFTED = "drafted", "Drafted"
    FAILED = "failed", "Failed"


class Decision(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    EDITED = "edited", "Edited"
    REJECTED = "rejected", "Rejected"


class ReviewState(models.TextChoices):
    """Where a task's review stands: the outcome of record (`Task.state` is drafting)."""

    OPEN = "open", "Open"  # no reading yet
    IN_REVIEW = "in_review", "In review"  # fewer readings than the project asks for
    DISAGREEMENT = "disagreement", "Disagreement"  # readers disagree: waits for adjudication
    FINAL = "final", "Final"  # readers agree, or an adjudicator decided


# A task's `decided_at` before any decision: older than every decision, so that the task
# list sorts on a column that is never null.
NO_DECISION = datetime(1970, 1, 1, tzinfo=UTC)


class Task(models.Model):
    """One image in one project, on its way from upload to a validated label."""

    # No index of its own: every index of Meta.indexes starts with it (each is one more
    # entry to write when a decision moves the task).
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="tasks", db_index=False
    )
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="tasks")
    state = models.CharField(max_length=10, choices=TaskState.choices, default=TaskState.NEW)
    error = models.TextField(blank=True)
    # Manifest fields (organ, procedure, ...) that prompt templates can use.
    metadata = models.JSONField(default=dict, blank=True)
    # Bumped at each claim by a worker; drafts are keyed by it, so a redelivery cannot duplicate.
    attempt = models.PositiveIntegerField(default=0)
    # Outbox: set with the move to queued, cleared once the broker took the drafting message;
    # the sweep sends what is still pending (the broker was down).
    message_pending = models.BooleanField(default=False)
    # Times a claim ended without an outcome (worker lost, time limit, crash); see the sweep.
    lost_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    drafting_started_at = models.DateTimeField(null=True, blank=True)
    # Computed by services from the readings and the adjudication, never set by hand.
    review_state = models.CharField(
        max_length=12, choices=ReviewState.choices, default=ReviewState.OPEN
    )
    # The decision of the final label once the review state is final (the agreeing readings'
    # or the adjudication's), else blank. Computed with review_state.
    outcome = models.CharField(max_length=10, choices=Decision.choices, blank=True)
    # What the task list shows and sorts on, kept with the writes that change them (the
    # readings by `services._review_settle`, the draft by `services.draft_record`) so that
    # a sort is an index scan, not a count over every task's labels. `recount_projects`
    # rebuilds them.
    readings_count = models.PositiveIntegerField(default=0)
    # Its readings' latest decision; NO_DECISION (older than any) when it has none.
    decided_at = models.DateTimeField(default=NO_DECISION)
    # The newest draft's prompt version: 0 the modality's default prompt, -1 no draft yet.
    prompt_version = models.IntegerField(default=-1)
    draft_truncated = models.BooleanField(default=False)
    # The image's file name (`Image.original_name`), for the list's sort by name from an
    # index. Set by the database (a trigger of migration 0031, on every insert and change
    # of image, whoever writes the row): whatever is saved here is replaced.
    file_name = models.CharField(max_length=255, default="", editable=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "image"], name="task_image_once"),
            models.CheckConstraint(
                condition=Q(state__in=TaskState.values), name="task_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(state="failed") | Q(error=""), name="task_error_only_when_failed"
            ),
            models.CheckConstraint(
                condition=Q(review_state="final", outcome__in=Decision.values)
                | (~Q(review_state="final") & Q(outcome="")),
                name="task_outcome_only_when_final",
            ),
        ]
        # With id last: the oldest tasks of a kind come in index order (claims, "next", a
        # page of the project), with no sort over a project's tasks. The partial indexes
        # hold only what they serve: the tasks still to read (the claim query), the
        # disagreements (the adjudication queue), and the outcomes (the project's filters).
        indexes = [
            models.Index(fields=["project", "state", "id"], name="task_project_state_id"),
            models.Index(fields=["project", "readings_count", "id"], name="task_readings"),
            models.Index(fields=["project", "decided_at", "id"], name="task_decided"),
            models.Index(fields=["project", "prompt_version", "id"], name="task_prompt"),
            models.Index(fields=["project", "file_name", "id"], name="task_file_name"),
            models.Index(
                fields=["project", "id"],
                name="task_to_read",
                condition=Q(state="drafted", review_state__in=["open", "in_review"]),
            ),
            models.Index(
                fields=["project", "id"],
                name="task_disagreement",
                condition=Q(review_state="disagreement"),
            ),
            models.Index(
                fields=["project", "outcome", "id"],
                name="task_outcome",
                condition=~Q(outcome=""),
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk} ({self.state})"

    def latest_draft(self) -> Draft | None:
        return self.drafts.order_by("-created_at", "-id").first()


# The review states in which a task still wants readings.
TO_READ = (ReviewState.OPEN, ReviewState.IN_REVIEW)


class ProjectCounters(models.Model):
    """A project's tasks by drafting state, by review (still to read, in review, in
    disagreement, and final by outcome) and its labels, kept in step with every change, in
    the same transaction (`annotations.counters`): pages read these instead of counting
    tasks. `python manage.py recount_projects` recomputes them."""

    project = models.OneToOneField(
        Project, on_delete=models.CASCADE, primary_key=True, related_name="counters"
    )
    new = models.BigIntegerField(default=0)
    queued = models.BigIntegerField(default=0)
    drafting = models.BigIntegerField(default=0)
    drafted = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    # Drafted tasks that still want readings (the reviewers' queue).
    to_read = models.BigIntegerField(default=0)
    in_review = models.BigIntegerField(default=0)
    disagreement = models.BigIntegerField(default=0)
    # Final tasks by outcome.
    accepted = models.BigIntegerField(default=0)
    edited = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    labels = models.BigIntegerField(default=0, help_text="Labels (decisions) of all reviewers")

    class Meta:
        verbose_name_plural = "project counters"

    def __str__(self) -> str:
        return f"Counters of {self.project_id}"

    def by_state(self) -> dict[str, int]:
        return {state: getattr(self, state) for state in TaskState.values}


class ReaderCounters(models.Model):
    """One reader's labels in one project, kept with each decision and undo (the queue's
    "k of N" reads it instead of counting their labels)."""

    # No index of its own: reader_counters_once starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="reader_counters", db_index=False
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reader_counters"
    )
    labels = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "reviewer"], name="reader_counters_once")
        ]

    def __str__(self) -> str:
        return f"Labels of {self.reviewer_id} in {self.project_id}"


class AgreementCell(models.Model):
    """One kept sum of a double-read project's agreement between readers (see
    `annotations.agreement.task_cells`), changed with each reading: the project page reads
    these few rows, never the labels."""

    # No index of its own: agreement_cell_once starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="agreement", db_index=False
    )
    key = models.CharField(max_length=40)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="agreement_cell_once")
        ]

    def __str__(self) -> str:
        return f"{self.key} = {self.value} in {self.project_id}"


class Claim(models.Model):
    """A reader's hold on a drafted task while they read it: at most the project's readings
    per task readers hold or have read a task (one, unless double reading). It expires
    unless the open page renews it, and a decision releases it
    (`annotations.services.claim_next`)."""

    # No index of their own: claim_one_per_reader starts with the task and
    # claim_reviewer_expiry with the reviewer (a decision renews a claim: every index of
    # the table gets an entry).
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="claims", db_index=False)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="claims", db_index=False
    )
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Claimed ahead, while the reader read `after_task`: its review area as rendered then
    # (annotations.views.review_ahead), which the decision on `after_task` sends at once.
    # It goes with the claim.
    after_task = models.BigIntegerField(null=True, blank=True)
    page = models.TextField(blank=True, db_default="")

    class Meta:
        constraints = [
            # One claim per reader and task; how many readers, claim_next counts under the lock.
            models.UniqueConstraint(fields=["task", "reviewer"], name="claim_one_per_reader"),
        ]
        # The reviewer's own live claim, looked up first by every claim.
        indexes = [models.Index(fields=["reviewer", "expires_at"], name="claim_reviewer_expiry")]

    def __str__(self) -> str:
        return f"Task {self.task_id} claimed by {self.reviewer} until {self.expires_at:%H:%M}"


class Draft(models.Model):
    """AI output for one task, with everything needed to reproduce it."""

    # No index of its own: draft_once_per_attempt starts with it.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="drafts", db_index=False)
    attempt = models.PositiveIntegerField()
    text = models.TextField()
    backend = models.CharField(max_length=100)
    model_id = models.CharField(max_length=300)
    model_revision = models.CharField(max_length=100, blank=True)
    prompt = models.TextField(help_text="The exact rendered prompt")
    system_prompt = models.TextField(blank=True)
    instruction = models.TextField(blank=True)
    # Null: the modality's built-in default prompt.
    prompt_template = models.ForeignKey(
        PromptTemplate, null=True, blank=True, on_delete=models.PROTECT, related_name="drafts"
    )
    thinking = models.TextField(blank=True, help_text="The model's thinking trace, kept apart")
    truncated = models.BooleanField(default=False, help_text="Hit the token limit")
    # What the model saw of a slide: level-0 regions with size and microns per pixel.
    regions = models.JSONField(default=list, blank=True)
    generation = models.JSONField(default=dict)
    tokens_in = models.PositiveIntegerField()
    tokens_out = models.PositiveIntegerField()
    seconds = models.FloatField(help_text="Seconds in generate (shared by a batch)")
    seconds_total = models.FloatField(default=0, help_text="Seconds from claim to stored draft")
    # ROUGE-L against the manifest's reference text (0 to 1), computed when stored; null
    # where the task has no reference.
    rouge_reference = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt"], name="draft_once_per_attempt"),
            models.CheckConstraint(
                condition=Q(rouge_reference__gte=0, rouge_reference__lte=1)
                | Q(rouge_reference=None),
                name="draft_rouge_reference_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Draft {self.pk} of task {self.task_id}"


class Label(models.Model):
    """A reviewer's validated decision on a task's draft."""

    # No index of its own: label_once_per_reviewer (task, reviewer) serves it.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="labels", db_index=False)
    draft = models.ForeignKey(Draft, on_delete=models.PROTECT, related_name="labels")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    text = models.TextField(blank=True, help_text="The final text: the draft, or the edit")
    reason = models.TextField(blank=True)
    # Region pointers drawn on the image with the decision: GeoJSON Features in level-0
    # pixel coordinates (QuPath's and the Digital Slide Archive's convention), each with a
    # short note in properties.note.
    regions = models.JSONField(default=list, blank=True)
    # Optimistic concurrency: a decision names the revision it was made on, so a second tab
    # or a page from the Back button cannot overwrite a newer decision unseen.
    revision = models.PositiveIntegerField(default=1)
    # The decision form instance that last wrote the label: the same form posted again (a
    # double click, a retried request) changes nothing.
    client_id = models.UUIDField(null=True, blank=True)
    # What was wrong with the draft, from the project's correction categories as they were
    # then (blank for accepts).
    category = models.CharField(max_length=80, blank=True)
    # Edit distance from the draft to the final text, in characters and in words: 0 for an
    # accept, null for a reject (nothing was kept).
    edit_chars = models.PositiveIntegerField(null=True, blank=True)
    edit_words = models.PositiveIntegerField(null=True, blank=True)
    # From the decision form's first render to the decision; null when the form's signed
    # render time was missing or forged.
    time_on_task_ms = models.PositiveBigIntegerField(null=True, blank=True)
    # An accept faster than the project's fast_accept_seconds.
    fast_accept = models.BooleanField(default=False)
    # ROUGE-L of the judged draft against the kept text: 1 for an accept, null for a
    # reject (nothing was kept).
    rouge_l = models.FloatField(null=True, blank=True)
    # The signature of the current decision, where the project asks for one (§11.50): the
    # signer's printed name, when, and what signing meant. Blank: not signed.
    signed_by_name = models.CharField(max_length=300, blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    signature_meaning = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "reviewer"], name="label_once_per_reviewer"),
            models.CheckConstraint(
                condition=~Q(decision="rejected") | ~Q(category=""),
                name="label_reject_has_category",
            ),
            models.CheckConstraint(
                condition=Q(decision="accepted") | Q(fast_accept=False),
                name="label_fast_only_accepts",
            ),
            models.CheckConstraint(
                condition=Q(decision__in=Decision.values), name="label_decision_valid"
            ),
            models.CheckConstraint(
                condition=~Q(decision="rejected") | ~Q(reason=""), name="label_reject_has_reason"
            ),
            models.CheckConstraint(
                condition=Q(decision="rejected") | ~Q(text=""), name="label_kept_text_not_empty"
            ),
            models.CheckConstraint(
                condition=Q(rouge_l__gte=0, rouge_l__lte=1) | Q(rouge_l=None),
                name="label_rouge_l_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.reviewer} on task {self.task_id}"


class EditAutosave(models.Model):
    """The text a reviewer is editing, saved as they type: a closed tab loses nothing.
    Deleted when they decide."""

    # No index of its own: autosave_once_per_reviewer starts with it.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="autosaves", db_index=False
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="autosaves"
    )
    text = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "reviewer"], name="autosave_once_per_reviewer"),
        ]

    def __str__(self) -> str:
        return f"Unsaved edit by {self.reviewer} on task {self.task_id}"


class SentinelExpected(models.TextChoices):
    REJECT = "reject", "Reject"
    EDIT = "edit", "Edit"


class Sentinel(models.Model):
    """A check draft: a task's draft with a deliberate error, served to readers in the queue
    in place of the task's draft, to measure automation bias. Never a label, never exported."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="sentinels")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="sentinels")
    text = models.TextField(help_text="The altered draft text shown to the reader")
    expected = models.CharField(max_length=10, choices=SentinelExpected.choices)
    note = models.TextField(help_text="What was altered: shown to the reader after the decision")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=~Q(text=""), name="sentinel_has_text"),
            models.CheckConstraint(
                condition=Q(expected__in=SentinelExpected.values), name="sentinel_expected_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Sentinel {self.pk} on task {self.task_id}"


class SentinelReading(models.Model):
    """A reader's decision on a sentinel: whether they caught its deliberate error."""

    # No index of its own: sentinel_read_once starts with it.
    sentinel = models.ForeignKey(
        Sentinel, on_delete=models.CASCADE, related_name="readings", db_index=False
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sentinel_readings"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    text = models.TextField(blank=True, help_text="The reader's edit, for an edit")
    caught = models.BooleanField()
    # The decision form that recorded it: the same form posted again is the same reading.
    client_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Served once per reader.
            models.UniqueConstraint(fields=["sentinel", "reviewer"], name="sentinel_read_once"),
            models.CheckConstraint(
                condition=Q(decision__in=Decision.values), name="sentinel_reading_decision_valid"
            ),
        ]

    def __str__(self) -> str:
        outcome = "caught" if self.caught else "missed"
        return f"{self.reviewer} {outcome} sentinel {self.sentinel_id}"


class AuditEvent(models.Model):
    """Append-only: every decision and state change, who, when, before and after."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    action = models.CharField(max_length=50)
    # PROTECT: audited history outlives nothing it describes; the table refuses deletes.
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT)
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.PROTECT)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    # Set by the database on insert (migration 0018): the chain that verify_audit checks.
    prev_hash = models.CharField(max_length=64, default="", editable=False)
    hash = models.CharField(max_length=64, default="", editable=False)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            # Two rows linked to the same predecessor would be a fork of the chain.
            models.UniqueConstraint(fields=["prev_hash"], name="audit_chain_does_not_fork"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action}"


class Adjudication(models.Model):
    """The final label of a task whose readers disagreed, by an adjudicator who saw all the
    readings it resolves."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="adjudication")
    adjudicator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications"
    )
    draft = models.ForeignKey(Draft, on_delete=models.PROTECT, related_name="adjudications")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    text = models.TextField(blank=True, help_text="The final text: the draft, or the edit")
    category = models.CharField(max_length=80, blank=True)
    reason = models.TextField(blank=True)
    readings = models.ManyToManyField(Label, related_name="adjudications")
    # The adjudicator's signature of the final label, where the project asks for one
    # (§11.50), as a reading's: printed name, when, and what signing meant. Blank: unsigned.
    signed_by_name = models.CharField(max_length=300, blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    signature_meaning = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(decision__in=Decision.values), name="adjudication_decision_valid"
            ),
            models.CheckConstraint(
                condition=~Q(decision="rejected") | ~Q(reason=""),
                name="adjudication_reject_has_reason",
            ),
            models.CheckConstraint(
                condition=Q(decision="rejected") | ~Q(text=""),
                name="adjudication_kept_text_not_empty",
            ),
            # A signature is whole (name, time and meaning) or absent.
            models.CheckConstraint(
                condition=Q(signed_at__isnull=True, signed_by_name="", signature_meaning="")
                | (Q(signed_at__isnull=False) & ~Q(signed_by_name="") & ~Q(signature_meaning="")),
                name="adjudication_signature_whole",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.adjudicator} on task {self.task_id} (adjudicated)"


class ExportState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class ExportOrigin(models.TextChoices):
    WEB = "web", "Web page or API"  # a worker writes the file, offered for download
    COMMAND = "command", "Command line"  # `export_labels` wrote it where it was told
    DOWNLOAD = "download", "Page download"  # streamed to the browser as it was made


# The file an export job writes (annotations.exports.file_format): a training format
# (chat, dpo...) is a JSON Lines file, and its job keeps the format in its options; a
# Hugging Face dataset, or a training set with its images, is a zip.
EXPORT_FORMATS = ("jsonl", "csv", "zip")


class ExportJob(models.Model):
    """An export written by a worker into a private file (`annotations.exportjobs`): a large
    project would outlive a web request. The file is offered only once it is complete (done),
    and deleted when the job expires. An export made on the command line (`export_labels`)
    is recorded as a job too, once it ended, so that task histories list it: it has no file
    here and is never offered."""

    # No index of its own: exportjob_project_recent starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="export_jobs", db_index=False
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    origin = models.CharField(max_length=8, choices=ExportOrigin.choices, default=ExportOrigin.WEB)
    # Command line only: where the command wrote the export (a path, or "stdout").
    output = models.CharField(max_length=1000, blank=True)
    format = models.CharField(max_length=8, default="jsonl")
    # write_export's keyword options beyond the format (readings, history, ...).
    options = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=8, choices=ExportState.choices, default=ExportState.QUEUED)
    rows_done = models.BigIntegerField(default=0)
    # What the project's counters promised at the start: the progress bar's end.
    rows_expected = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    # Relative to the exports folder (MEDIA_ROOT/exports, never served statically).
    file = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=ExportState.values), name="exportjob_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(format__in=EXPORT_FORMATS), name="exportjob_format_valid"
            ),
            models.CheckConstraint(
                condition=Q(rows_done__gte=0, rows_expected__gte=0), name="exportjob_rows_pos"
            ),
            # A finished file and its expiry go together: the sweep finds every file.
            models.CheckConstraint(
                condition=~Q(state=ExportState.DONE)
                | ~Q(origin=ExportOrigin.WEB)
                | (~Q(file="") & Q(expires_at__isnull=False)),
                name="exportjob_done_has_file",
            ),
            models.CheckConstraint(
                condition=Q(origin__in=ExportOrigin.values), name="exportjob_origin_valid"
            ),
            # The command line's is recorded once it ended, with where it went; a page
            # download's while it streams, with the file name the browser was given. No file
            # here for either (nothing to download, sweep or expire). A worker's names no
            # output.
            models.CheckConstraint(
                condition=Q(origin=ExportOrigin.WEB, output="")
                | (
                    Q(
                        origin=ExportOrigin.COMMAND,
                        state__in=[ExportState.DONE, ExportState.FAILED],
                        file="",
                        expires_at__isnull=True,
                    )
                    & ~Q(output="")
                )
                | (
                    Q(
                        origin=ExportOrigin.DOWNLOAD,
                        state__in=[ExportState.RUNNING, ExportState.DONE, ExportState.FAILED],
                        file="",
                        expires_at__isnull=True,
                    )
                    & ~Q(output="")
                ),
                name="exportjob_command_has_no_file",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="exportjob_project_recent"),
            models.Index(fields=["state", "expires_at"], name="exportjob_state_expiry"),
        ]

    def __str__(self) -> str:
        return f"Export {self.pk} of project {self.project_id} ({self.state})"

    @property
    def active(self) -> bool:
        """Queued or running: its page polls."""
        return self.state in (ExportState.QUEUED, ExportState.RUNNING)


class UploadBatch(models.Model):
    """The files a user sends from one visit of the upload page, ingested together when the
    page says they are all in (a DICOM series or a MIRAX folder stays one image)."""

    # No index of its own: uploadbatch_project_recent starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="upload_batches", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # {"files": [{"name", "status", "message"}], "warnings": [str]}: kept for the report page.
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="uploadbatch_project_recent")
        ]

    def __str__(self) -> str:
        return f"Upload batch {self.pk} of project {self.project_id}"


class UploadState(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    COMPLETE = "complete", "Complete"
    INGESTED = "ingested", "Ingested"


class Upload(models.Model):
    """One resumable (tus) upload: a file arriving in pieces into the staging folder."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="uploads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    batch = models.ForeignKey(UploadBatch, on_delete=models.CASCADE, related_name="uploads")
    filename = models.CharField(max_length=255)
    relative_path = models.CharField(max_length=1000, blank=True)
    length = models.BigIntegerField()
    offset = models.BigIntegerField(default=0)
    # The whole file's sha256 as the browser computed it; empty when it could not.
    checksum = models.CharField(max_length=64, blank=True)
    state = models.CharField(
        max_length=10, choices=UploadState.choices, default=UploadState.RECEIVING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(offset__gte=0, length__gte=0, offset__lte=F("length")),
                name="upload_offset_within_length",
            ),
            models.CheckConstraint(
                condition=Q(state__in=UploadState.values), name="upload_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Upload {self.pk} ({self.filename}, {self.offset}/{self.length})"


class ApiToken(models.Model):
    """A user's key to the REST API. Only a hash of the secret is kept: the token is shown
    once, when made; `prefix` (not secret) finds the row without scanning every hash."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ExportedTask(models.Model):
    """A task an export job's file included: written once, when the job finishes, by one
    INSERT ... SELECT with the export's own filter (`exportjobs.export_job_run`)."""

    # No index of their own: exportedtask_once starts with the job, exportedtask_task with
    # the task.
    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="+", db_index=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="exports", db_index=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "task"], name="exportedtask_once"),
        ]
        indexes = [models.Index(fields=["task", "job"], name="exportedtask_task")]

    def __str__(self) -> str:
        return f"Task {self.task_id} in export {self.job_id}"


class ReviewDay(models.Model):
    """One reader's decisions in a project, by the day each reading was first made (UTC),
    as they stand now: a changed decision moves from its old figures to its new ones, an
    undo takes it back. Kept by the decision's own statement (`annotations.insights`), so the
    insights page sums these rows and never reads labels. Times and edit sizes keep sums,
    sums of squares and histograms (a median cannot be summed: it is estimated from the
    histogram)."""

    # No index of its own: reviewday_once starts with it.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+", db_index=False)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    day = models.DateField()
    readings = models.BigIntegerField(default=0)
    accepted = models.BigIntegerField(default=0)
    edited = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    fast_accepts = models.BigIntegerField(default=0)
    # Readings with a known time on task, and its sum and sum of squares (milliseconds).
    timed = models.BigIntegerField(default=0)
    time_ms = models.BigIntegerField(default=0)
    time_ms_sq = models.FloatField(default=0)
    time_hist = models.JSONField(default=dict)  # {bucket: readings}, insights.TIME_BUCKETS
    # Kept texts (accepted or edited) with an edit size in words: sum, squares, histogram.
    edit_words = models.BigIntegerField(default=0)
    edit_words_sq = models.FloatField(default=0)
    edit_hist = models.JSONField(default=dict)  # {bucket: readings}, insights.EDIT_BUCKETS
    categories = models.JSONField(default=dict)  # {correction category: readings}

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "reviewer", "day"], name="reviewday_once"),
        ]

    def __str__(self) -> str:
        return f"Readings of {self.reviewer_id} in {self.project_id} on {self.day}"


class DraftDay(models.Model):
    """A project's drafting on one day (UTC): drafts stored (by their creation), truncated,
    seconds per draft (sum and squares), failures by reason, and the queue depth seen at
    each drafting write. Kept with the draft's or the failure's own write."""

    # No index of its own: draftday_once starts with it.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()
    drafts = models.BigIntegerField(default=0)
    truncated = models.BigIntegerField(default=0)
    seconds = models.FloatField(default=0)
    seconds_sq = models.FloatField(default=0)
    failed = models.BigIntegerField(default=0)
    failures = models.JSONField(default=dict)  # {reason (first line, short): failures}
    first_at = models.DateTimeField(null=True)
    last_at = models.DateTimeField(null=True)
    queue_max = models.BigIntegerField(default=0)
    queue_last = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "day"], name="draftday_once"),
        ]

    def __str__(self) -> str:
        return f"Drafting of {self.project_id} on {self.day}"


class ArmDay(models.Model):
    """One arm of a project's prompt and model comparison (a prompt version, 0 for the
    modality's built-in prompt, and a model revision) on one day (UTC): its drafts, by
    their creation, with ROUGE-L against the manifest's reference; and the readings of its
    drafts, by the day each was first made, as they stand now (a changed decision moves
    its figures, an undo takes them back). Kept with the draft's write and in the
    decision's own statement (`annotations.insights`), like ReviewDay and DraftDay."""

    # No index of its own: armday_once starts with it.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+", db_index=False)
    prompt_version = models.PositiveIntegerField()
    model_revision = models.CharField(max_length=100, blank=True)
    day = models.DateField()
    drafts = models.BigIntegerField(default=0)
    # Drafts with a reference text: ROUGE-L count, sum and sum of squares.
    ref_n = models.BigIntegerField(default=0)
    ref_sum = models.FloatField(default=0)
    ref_sq = models.FloatField(default=0)
    readings = models.BigIntegerField(default=0)
    accepted = models.BigIntegerField(default=0)
    edited = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    edit_hist = models.JSONField(default=dict)  # {bucket: readings}, insights.EDIT_BUCKETS
    categories = models.JSONField(default=dict)  # {correction category: readings}
    # Kept texts (accepted or edited): ROUGE-L of the draft against them.
    rouge_n = models.BigIntegerField(default=0)
    rouge_sum = models.FloatField(default=0)
    rouge_sq = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "prompt_version", "model_revision", "day"], name="armday_once"
            ),
        ]

    def __str__(self) -> str:
        return f"Prompt v{self.prompt_version} / {self.model_revision} in {self.project_id}"


class ComparisonState(models.TextChoices):
    QUEUED = "queued", "Queued"
    DRAFTED = "drafted", "Drafted"
    FAILED = "failed", "Failed"


class Comparison(models.Model):
    """A blind comparison an admin started: a random sample of drafted tasks (drawn with
    `seed`, recorded so it can be drawn again) redrafted with a candidate prompt version,
    whose drafts readers judge in their queue without knowing which version made them.
    Served while `open`."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="comparisons")
    prompt_template = models.ForeignKey(
        PromptTemplate, on_delete=models.PROTECT, related_name="comparisons"
    )
    model_revision = models.CharField(max_length=100, blank=True)
    sample_size = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    open = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(sample_size__gt=0), name="comparison_sample_pos"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk} in project {self.project_id}"


class ComparisonDraft(models.Model):
    """A candidate draft of a comparison for one sampled task. Never the task's draft: the
    task's drafts, labels, review state and exports do not see it."""

    # No index of its own: comparison_task_once starts with it.
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="drafts", db_index=False
    )
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="comparison_drafts")
    # The task's draft when sampled: what the baseline arm's readings judged.
    baseline = models.ForeignKey(Draft, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(
        max_length=10, choices=ComparisonState.choices, default=ComparisonState.QUEUED
    )
    error = models.TextField(blank=True)
    text = models.TextField(blank=True)
    backend = models.CharField(max_length=100, blank=True)
    model_id = models.CharField(max_length=300, blank=True)
    model_revision = models.CharField(max_length=100, blank=True)
    prompt = models.TextField(blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0)
    truncated = models.BooleanField(default=False)
    rouge_reference = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    drafted_at = models.DateTimeField(null=True, blank=True)
    # The outbox, as for a task's drafting: set until the broker has taken the message, and
    # when it was last sent (one sent a lease ago and still queued was lost: sent again).
    message_pending = models.BooleanField(default=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "task"], name="comparison_task_once"),
            models.CheckConstraint(
                condition=Q(state__in=ComparisonState.values), name="comparison_state_valid"
            ),
            models.CheckConstraint(
                condition=~Q(state="drafted") | ~Q(text=""), name="comparison_drafted_has_text"
            ),
        ]

    def __str__(self) -> str:
        return f"Comparison draft {self.pk} of task {self.task_id}"


class ComparisonReading(models.Model):
    """A reader's decision on a comparison draft: the candidate arm's reading. Never a
    label, never exported."""

    # No index of its own: comparison_read_once starts with it.
    draft = models.ForeignKey(
        ComparisonDraft, on_delete=models.CASCADE, related_name="readings", db_index=False
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comparison_readings"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    category = models.CharField(max_length=80, blank=True)
    text = models.TextField(blank=True, help_text="The kept text: the draft, or the edit")
    edit_words = models.PositiveIntegerField(null=True, blank=True)
    # ROUGE-L of the comparison draft against the task's validated text, where it has one.
    rouge_l = models.FloatField(null=True, blank=True)
    client_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["draft", "reviewer"], name="comparison_read_once"),
            models.CheckConstraint(
                condition=Q(decision__in=Decision.values), name="comparison_reading_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.reviewer} on comparison draft {self.draft_id}"
