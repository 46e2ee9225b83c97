from django import forms

from annotations.models import Decision
from annotations.prompts import validate_template


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
        help_text="Slides (SVS, NDPI, TIFF, DICOM, ...) and photos (JPEG, PNG, ...).",
    )


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=Decision.choices)
    draft_id = forms.IntegerField(widget=forms.HiddenInput)
    text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}))
    reason = forms.CharField(required=False, max_length=2000)

    def clean(self):
        data = super().clean()
        if data.get("decision") == Decision.EDITED and not (data.get("text") or "").strip():
            self.add_error("text", "An edited label needs text.")
        if data.get("decision") == Decision.REJECTED and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the draft is rejected.")
        return data


class ProjectSettingsForm(forms.Form):
    """A project's prompt (saved as a new version) and its whole-slide patch settings."""

    system = forms.CharField(
        label="System text",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional. Gemma puts it before the instruction in the first turn.",
    )
    instruction = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="Manifest fields can be filled in: {organ}, {procedure}, {site} ...",
    )
    target_mpp = forms.FloatField(label="Patch resolution (µm per pixel)", min_value=0.1)
    patch_size = forms.IntegerField(label="Patch size (pixels)", min_value=64, max_value=4096)
    max_patches = forms.IntegerField(label="Patches per slide, at most", min_value=1, max_value=500)

    def clean(self):
        data = super().clean()
        for name in ("system", "instruction"):
            try:
                validate_template(data.get(name) or "")
            except ValueError as exc:
                self.add_error(name, str(exc))
        return data
