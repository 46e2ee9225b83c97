"""The account page where a user makes and revokes their own API tokens."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from annotations import api_tokens


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Name",
        help_text="What the token is for, e.g. the script or the computer that uses it.",
    )
    expires = forms.TypedChoiceField(
        label="Expires",
        choices=[("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year"), ("", "never")],
        coerce=int,
        empty_value=None,
        required=False,
        initial="90",
    )

    def expires_at(self):
        days = self.cleaned_data.get("expires")
        return timezone.now() + timedelta(days=days) if days else None


@require_http_methods(["GET", "POST"])
@login_required
@never_cache
def token_list(request: HttpRequest) -> HttpResponse:
    """The user's tokens; a POST makes one and shows its secret on this answer only."""
    form = TokenForm(request.POST or None)
    new = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            new = api_tokens.token_create(
                user=request.user, name=form.cleaned_data["name"], expires_at=form.expires_at()
            )
            form = TokenForm()
            status = 201
        else:
            status = 422
    context = {
        "form": form,
        "new": new,
        "tokens": api_tokens.tokens_of(request.user),
        "now": timezone.now(),
    }
    return render(request, "annotations/tokens.html", context, status=status)


@require_POST
@login_required
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's own tokens (another user's is a 404: an admin revokes those
    in the Django admin)."""
    token = api_tokens.tokens_of(request.user).filter(pk=token_id).first()
    if token is None:
        raise Http404("No such token")
    if api_tokens.token_revoke(token=token, actor=request.user):
        messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("account-tokens")
