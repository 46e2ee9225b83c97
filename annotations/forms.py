from django import forms

from annotations.models import Decision


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
