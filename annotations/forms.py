import functools

from django import forms
from django.utils.choices import BaseChoiceIterator

from annotations.models import (
    CORRECTION_CATEGORIES,
    MAX_CATEGORY_CHARS,
    MAX_DISAGREEMENT_WORDS,
    MAX_READINGS,
    MIN_READINGS,
    Decision,
    Role,
    SentinelExpected,
    correction_categories_clean,
    sentinel_share_clean,
)
from annotations.prompts import MAX_TEMPLATE_CHARS, validate_template
from annotations.regions import InvalidRegions, parse_regions
from annotations.signatures import (
    ADJUDICATION_MEANING,
    MAX_SITTING_MINUTES,
    MEANING,
    MIN_SITTING_MINUTES,
)
from imaging.patches import PATCH_SETTING_RANGES, PatchSettings


def signature_password() -> forms.CharField:
    """The password that signs a decision or an adjudication, asked only when a signature
    is due (annotations.signatures); never kept or echoed."""
    return forms.CharField(
        required=False,
        strip=False,
        max_length=4096,
        label="Your password",
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, list | tuple) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError("Choose at least one file.")
        return files


class UploadForm(forms.Form):
    files = MultipleFileField(
        label="Images",
        help_text=(
            "Slides (SVS, NDPI, TIFF, DICOM, ...) and photos (JPEG, PNG, ...). Choose all "
            "files of a DICOM series together; send a MIRAX slide (.mrxs and its folder) as "
            "a zip."
        ),
    )


class _Choices(BaseChoiceIterator):
    """Choices made once and shared by every form that offers them: a field takes them as
    they are (Django normalises plain lists again for each form, on the review hot path)."""

    def __init__(self, choices: list[tuple[str, str]]) -> None:
        self.choices = choices

    def __iter__(self):
        return iter(self.choices)


@functools.lru_cache(maxsize=256)
def _category_choices(categories: tuple[str, ...]) -> tuple[_Choices, _Choices]:
    """The reject and the edit category choices of a project's correction categories."""
    choices = [(value, value) for value in categories]
    return _Choices([("", "Choose…"), *choices]), _Choices([("", "Not said"), *choices])


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=Decision.choices)
    draft_id = forms.IntegerField(widget=forms.HiddenInput)
    # The label's revision the decision was made on (0: no label yet). Missing counts as 0,
    # so a post without it can make a first decision but never overwrite one.
    label_revision = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    # This form instance's id: the same form posted twice is one decision.
    client_id = forms.UUIDField(required=False, widget=forms.HiddenInput)
    text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}))
    reason = forms.CharField(required=False, max_length=2000)
    # Region pointers drawn on the viewer (JSON GeoJSON Features, level-0 pixels): filled
    # by static/js/viewer.js; without JavaScript it stays empty.
    regions = forms.CharField(required=False, strip=False, widget=forms.HiddenInput)
    # What was wrong with the draft, from the project's correction categories: required for
    # a reject, offered for an edit.
    category = forms.ChoiceField(required=False, label="What was wrong")
    edit_category = forms.ChoiceField(required=False, label="What the edit corrects")
    # When the form was first rendered, signed (annotations.reviewtime): time on task.
    rendered_at = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)
    password = signature_password()

    def __init__(
        self,
        *args,
        image_size: tuple[int, int] | None = None,
        categories: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.judged_on(image_size=image_size, categories=categories)

    def judged_on(
        self, *, image_size: tuple[int, int] | None, categories: list[str] | None
    ) -> None:
        """What the decision is checked against: the image's size (region pointers) and
        the project's correction categories. Set when the form is made, or after, for a form
        read before its task was (the review queue's hot path)."""
        self.image_size = image_size
        listed = tuple(CORRECTION_CATEGORIES if categories is None else categories)
        self.fields["category"].choices, self.fields["edit_category"].choices = _category_choices(
            listed
        )

    def clean_label_revision(self) -> int:
        return self.cleaned_data.get("label_revision") or 0

    def clean_regions(self) -> list[dict]:
        width, height = self.image_size or (None, None)
        try:
            return parse_regions(self.cleaned_data.get("regions") or "", width=width, height=height)
        except InvalidRegions as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        data = super().clean()
        if data.get("decision") == Decision.EDITED and not (data.get("text") or "").strip():
            self.add_error("text", "An edited label needs text.")
        if data.get("decision") == Decision.REJECTED and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the draft is rejected.")
        if data.get("decision") == Decision.REJECTED and not data.get("category"):
            self.add_error("category", "Choose what was wrong with the draft.")
        if data.get("decision") == Decision.EDITED:
            data["category"] = data.get("edit_category") or ""
        return data


class AutosaveForm(forms.Form):
    """The text being edited, saved as the reviewer types."""

    text = forms.CharField(required=False, strip=False, max_length=100_000)
    # The revision of the label the page was shown with: a keystroke that arrives after a
    # decision made since is not kept.
    label_revision = forms.IntegerField(required=False, min_value=0)


def _patch_field(name: str, label: str) -> forms.Field:
    lo, hi = PATCH_SETTING_RANGES[name]
    if isinstance(getattr(PatchSettings(), name), int):
        return forms.IntegerField(label=label, min_value=int(lo), max_value=int(hi))
    return forms.FloatField(label=label, min_value=lo, max_value=hi)


class ProjectSettingsForm(forms.Form):
    """A project's prompt (saved as a new version) and its whole-slide patch settings.

    The patch settings are judged by imaging.patches.PatchSettings, the code that uses them;
    the field bounds come from the same ranges.
    """

    system = forms.CharField(
        label="System text",
        required=False,
        max_length=MAX_TEMPLATE_CHARS,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional. Gemma puts it before the instruction in the first turn.",
    )
    instruction = forms.CharField(
        max_length=MAX_TEMPLATE_CHARS,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="Manifest fields can be filled in: {organ}, {procedure}, {site} ...",
    )
    target_mpp = _patch_field("target_mpp", "Patch resolution (µm per pixel)")
    patch_size = _patch_field("patch_size", "Patch size (pixels)")
    max_patches = _patch_field("max_patches", "Patches per slide, at most")
    correction_categories = forms.CharField(
        label="Correction categories",
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text=(
            f"One a line, up to 30, each at most {MAX_CATEGORY_CHARS} characters. Reviewers "
            "pick one when they reject a draft (and may when they edit one); labels keep the "
            "category they were given if it is removed here."
        ),
    )
    fast_accept_seconds = forms.IntegerField(
        label="Fast accept (seconds)",
        min_value=0,
        max_value=3600,
        help_text="Accepts made faster than this after the task was shown are flagged.",
    )
    # Not required: a form without them (an older page) keeps the project's values.
    readings_per_task = forms.IntegerField(
        label="Readings per task",
        required=False,
        min_value=MIN_READINGS,
        max_value=MAX_READINGS,
        help_text="Different readers who read each task, blind to each other. With two or "
        "more, disagreements go to an adjudicator.",
    )
    disagreement_words = forms.IntegerField(
        label="Disagreement threshold (words)",
        required=False,
        min_value=0,
        max_value=MAX_DISAGREEMENT_WORDS,
        help_text="Two edited texts further apart than this many words disagree.",
    )
    sentinel_share = forms.FloatField(
        label="Share of check drafts",
        required=False,
        min_value=0,
        help_text=(
            "From 0 to 0.5: the share of each reader's queue served as check drafts (drafts "
            "with a deliberate error, written on the check drafts page). 0: none."
        ),
    )

    # Without the sitting length (an older page), the project's signature settings stay.
    signature_required = forms.BooleanField(
        label="Require a signature on each decision",
        required=False,
        help_text=(
            f"Each reading records the reader's full name, the time, and that they "
            f"“{MEANING}” (21 CFR Part 11 §11.50); each adjudication, the adjudicator's, "
            f"and that they “{ADJUDICATION_MEANING}”. Readers and adjudicators type their "
            "password to sign, once per sitting."
        ),
    )
    signature_sitting_minutes = forms.IntegerField(
        label="Sitting length (minutes)",
        required=False,
        min_value=MIN_SITTING_MINUTES,
        max_value=MAX_SITTING_MINUTES,
        help_text="After this long, the next decision asks for the password again.",
    )

    PATCH_FIELDS = ("target_mpp", "patch_size", "max_patches")

    def clean(self):
        data = super().clean()
        for name in ("system", "instruction"):
            if name in data:
                try:
                    validate_template(data[name] or "")
                except ValueError as exc:
                    self.add_error(name, str(exc))
        if all(name in data for name in self.PATCH_FIELDS):
            try:
                PatchSettings.from_dict({name: data[name] for name in self.PATCH_FIELDS})
            except ValueError as exc:
                field = next((n for n in self.PATCH_FIELDS if n in str(exc)), None)
                self.add_error(field, str(exc))
        return data

    def clean_correction_categories(self) -> list[str]:
        lines = self.cleaned_data["correction_categories"].splitlines()
        try:  # blank lines are layout, not empty categories
            return correction_categories_clean([line for line in lines if line.strip()])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_sentinel_share(self) -> float | None:
        share = self.cleaned_data.get("sentinel_share")
        if share is None:
            return None  # not given: unchanged
        try:
            return sentinel_share_clean(share)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class SentinelForm(forms.Form):
    """An admin's check draft for one task: the altered text and what a good reader does."""

    task = forms.IntegerField(label="Task number", min_value=1)
    text = forms.CharField(
        label="Check draft text",
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="Shown to readers as the task's draft. Alter the draft or a validated label.",
    )
    expected = forms.ChoiceField(
        label="A good reader would", choices=SentinelExpected.choices, initial="reject"
    )
    note = forms.CharField(
        label="What was altered",
        max_length=2000,
        help_text="Shown to each reader after their decision.",
    )


class ComparisonForm(forms.Form):
    """An admin's blind comparison: a candidate prompt version redrafts a random sample."""

    prompt_version = forms.TypedChoiceField(label="Candidate prompt version", coerce=int)
    model_revision = forms.CharField(
        label="Model revision the workers run",
        max_length=100,
        required=False,
        help_text="Recorded with the comparison; each candidate draft keeps the revision "
        "that made it.",
    )
    sample_size = forms.IntegerField(
        label="Tasks to redraft", min_value=1, max_value=500, initial=50
    )

    def __init__(self, *args, versions: list[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["prompt_version"].choices = [(v, f"v{v}") for v in versions or []]


class AdjudicationForm(forms.Form):
    """An adjudicator's final label on a task whose readers disagree."""

    decision = forms.ChoiceField(choices=Decision.choices)
    text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 8}))
    reason = forms.CharField(required=False, max_length=2000)
    category = forms.ChoiceField(required=False, label="What was wrong")
    password = signature_password()

    def __init__(self, *args, categories: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        listed = CORRECTION_CATEGORIES if categories is None else categories
        self.fields["category"].choices = [("", "Not said"), *((v, v) for v in listed)]

    def clean(self):
        data = super().clean()
        if data.get("decision") == Decision.EDITED and not (data.get("text") or "").strip():
            self.add_error("text", "An edited label needs text.")
        if data.get("decision") == Decision.REJECTED and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the draft is rejected.")
        return data


class MemberAddForm(forms.Form):
    """A project admin adds a member by user name or e-mail; a new e-mail is invited."""

    who = forms.CharField(
        label="User name or e-mail",
        max_length=254,
        help_text="Someone without an account yet gets an e-mail inviting them to set a password.",
    )
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.PATHOLOGIST)


class MemberRoleForm(forms.Form):
    """A member's new role, or their removal, named by their user id."""

    user = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    role = forms.ChoiceField(label="Role", choices=Role.choices, required=False)
