"""The Django admin: projects and their members. Decisions, drafts and the audit trail are
read-only here: they change only through the app's services. What the admin does change
(projects, their slide settings, members and roles) is audited like a change in the app."""

import json

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from annotations import services
from annotations.models import AuditEvent, Draft, Image, Label, Membership, Project, PromptTemplate

# Always kept, so that a change of one field still says which row (and member) it was.
_IDENTITY = {"id", "user", "project"}
_SECRET = {"password"}  # a user's password hash never goes into the trail


def _fields(obj, names=None) -> dict:
    """The row's own columns (all, or `names`), as JSON the audit trail can hold."""
    values = {
        f.name: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if (names is None or f.name in names or f.name in _IDENTITY) and f.name not in _SECRET
    }
    return json.loads(json.dumps(values, cls=DjangoJSONEncoder))


def _project_of(obj):
    return obj if isinstance(obj, Project) else getattr(obj, "project", None)


class AuditedAdmin(admin.ModelAdmin):
    """Writes an audit row, with before and after, for each add, change and delete made here
    (and in its inlines), in the transaction of the change."""

    def _audit(self, request, obj, verb: str, before, after) -> None:
        services.audit_record(
            action=f"admin.{obj._meta.model_name}.{verb}",
            actor=request.user,
            project=_project_of(obj),
            before=before,
            after=after,
        )

    def save_model(self, request, obj, form, change):
        names = set(form.changed_data) if change else None
        before = _fields(type(obj).objects.get(pk=obj.pk), names) if change else None
        super().save_model(request, obj, form, change)
        self._audit_saved(request, obj, before, names)

    def _audit_saved(self, request, obj, before, names) -> None:
        """Audit an add, or a change of what really differs (a form may call a field changed
        that it only wrote back the same, as a JSON field's "{}")."""
        after = _fields(obj, names)
        if before is None:
            self._audit(request, obj, "add", None, after)
            return
        differs = {k for k in after if k not in _IDENTITY and after[k] != before.get(k)}
        if differs:
            kept = differs | _IDENTITY
            before = {k: v for k, v in before.items() if k in kept}
            self._audit(
                request, obj, "change", before, {k: v for k, v in after.items() if k in kept}
            )

    def delete_model(self, request, obj):
        with transaction.atomic():
            self._audit(request, obj, "delete", _fields(obj), None)
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # The changelist's "delete selected" action: one row per object, as one by one.
        with transaction.atomic():
            for obj in queryset:
                self._audit(request, obj, "delete", _fields(obj), None)
            super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        # The forms' instances already hold the new values (set when the forms were cleaned);
        # the stored row is read for "before".
        pending = []
        for inline in formset.forms:
            if not inline.has_changed() or inline in formset.deleted_forms:
                continue
            obj, names = inline.instance, set(inline.changed_data)
            before = _fields(type(obj).objects.get(pk=obj.pk), names) if obj.pk else None
            pending.append((obj, before, names))
        for inline in formset.deleted_forms:
            if inline.instance.pk:
                self._audit(request, inline.instance, "delete", _fields(inline.instance), None)
        super().save_formset(request, form, formset, change)
        for obj, before, names in pending:
            self._audit_saved(request, obj, before, names if before is not None else None)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(AuditedAdmin):
    list_display = ["name", "modality", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    fields = ["name", "modality", "description", "slide_settings"]


@admin.register(PromptTemplate)
class PromptTemplateAdmin(ReadOnlyAdmin):
    list_display = ["project", "version", "created_by", "created_at"]
    list_filter = ["project"]


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ["original_name", "kind", "format", "width", "height", "sha256"]
    search_fields = ["original_name", "sha256"]


@admin.register(Draft)
class DraftAdmin(ReadOnlyAdmin):
    list_display = ["task", "model_id", "tokens_out", "seconds", "created_at"]


@admin.register(Label)
class LabelAdmin(ReadOnlyAdmin):
    list_display = ["task", "reviewer", "decision", "updated_at"]
    list_filter = ["decision"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor", "action", "project", "task"]
    list_filter = ["action"]


# Site-wide power (is_superuser, is_staff, is_active) changes here: audited like a role.
admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    pass
