"""API tokens in the Django admin: a superuser sees everyone's and revokes them.

Registered from medannot.urls (beside the admin's own URLs), apart from annotations.admin.
The secret is never shown, and a token is made only by its user, on the account page.
"""

from __future__ import annotations

from django.contrib import admin, messages

from annotations import api_tokens
from annotations.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = (
        "user",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    exclude = ("secret_sha256",)
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False  # a token is shown once, to its user: made on the account page

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoked, never deleted: the audit trail names it

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        n = sum(
            api_tokens.token_revoke(token=token, actor=request.user, reason="revoked by an admin")
            for token in queryset.select_related("user")
        )
        self.message_user(request, f"{n} token{'s' if n != 1 else ''} revoked.", messages.SUCCESS)
