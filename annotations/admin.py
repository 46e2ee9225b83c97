"""The Django admin: projects and their members. Decisions, drafts and the audit trail are
read-only here: they change only through the app's services."""

from django.contrib import admin

from annotations.models import AuditEvent, Draft, Image, Label, Membership, Project, PromptTemplate


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
class ProjectAdmin(admin.ModelAdmin):
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
