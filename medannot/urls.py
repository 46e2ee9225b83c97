from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from annotations import (  # noqa: F401 (api_admin)
    api_admin,
    api_views,
    tus_views,
    views,
    views_insights,
    views_members,
)
from annotations.api import api

urlpatterns = [
    path("", views.project_list, name="project-list"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("projects/<int:project_id>/", views.project_detail, name="project-detail"),
    path("projects/<int:project_id>/status/", views.project_status, name="project-status"),
    path("projects/<int:project_id>/tasks/", views.task_list, name="project-tasks"),
    path("projects/<int:project_id>/upload/", views.project_upload, name="project-upload"),
    path("projects/<int:project_id>/uploads/tus/", tus_views.tus_create, name="tus-create"),
    path(
        "projects/<int:project_id>/uploads/tus/<int:upload_id>",
        tus_views.tus_upload,
        name="tus-upload",
    ),
    path(
        "projects/<int:project_id>/uploads/batches/",
        tus_views.upload_batch_create,
        name="upload-batch-create",
    ),
    path(
        "projects/<int:project_id>/uploads/<int:batch_id>/",
        tus_views.upload_batch,
        name="upload-batch",
    ),
    path(
        "projects/<int:project_id>/uploads/<int:batch_id>/finish/",
        tus_views.upload_batch_finish,
        name="upload-batch-finish",
    ),
    path("projects/<int:project_id>/export.jsonl", views.project_export, name="project-export"),
    path("projects/<int:project_id>/exports/", views.export_start, name="export-start"),
    path("exports/<int:job_id>/", views.export_job, name="export-job"),
    path("exports/<int:job_id>/download/", views.export_download, name="export-download"),
    path("projects/<int:project_id>/settings/", views.project_settings, name="project-settings"),
    path(
        "projects/<int:project_id>/members/",
        views_members.project_members,
        name="project-members",
    ),
    path(
        "projects/<int:project_id>/members/role/",
        views_members.member_role,
        name="member-role",
    ),
    path(
        "projects/<int:project_id>/members/remove/",
        views_members.member_remove,
        name="member-remove",
    ),
    path(
        "projects/<int:project_id>/join/<str:uidb64>/<str:token>/",
        views_members.invite_accept,
        name="invite-accept",
    ),
    path("projects/<int:project_id>/sentinels/", views.project_sentinels, name="project-sentinels"),
    path(
        "projects/<int:project_id>/insights/",
        views_insights.project_insights,
        name="project-insights",
    ),
    path(
        "projects/<int:project_id>/insights/<slug:plot>.csv",
        views_insights.project_insights_csv,
        name="project-insights-csv",
    ),
    path(
        "projects/<int:project_id>/insights/comparisons/",
        views_insights.project_comparison_start,
        name="project-comparison-start",
    ),
    path(
        "comparisons/<int:comparison_id>/close/",
        views_insights.comparison_close,
        name="comparison-close",
    ),
    path(
        "projects/<int:project_id>/retry-failed/",
        views.project_retry_failed,
        name="project-retry-failed",
    ),
    path("projects/<int:project_id>/review/", views.review_start, name="review-start"),
    path(
        "projects/<int:project_id>/adjudication/",
        views.project_adjudication,
        name="project-adjudication",
    ),
    path("projects/<int:project_id>/review/done/", views.review_done, name="review-done"),
    path("projects/<int:project_id>/review/ahead/", views.review_ahead, name="review-ahead"),
    path("projects/<int:project_id>/review/undo/", views.review_undo, name="review-undo"),
    path("tasks/<int:task_id>/redraft/", views.task_redraft, name="task-redraft"),
    path("tasks/<int:task_id>/skip/", views.task_skip, name="task-skip"),
    path("tasks/<int:task_id>/claim/renew/", views.claim_renew, name="claim-renew"),
    path("tasks/<int:task_id>/", views.task_detail, name="task-detail"),
    path("tasks/<int:task_id>/history/", views.task_history, name="task-history"),
    path("tasks/<int:task_id>/decide/", views.task_decide, name="task-decide"),
    path("tasks/<int:task_id>/adjudicate/", views.task_adjudicate, name="task-adjudicate"),
    path("tasks/<int:task_id>/autosave/", views.task_autosave, name="task-autosave"),
    path("tasks/<int:task_id>/retry/", views.task_retry, name="task-retry"),
    path("tasks/<int:task_id>/preview.jpg", views.task_preview, name="task-preview"),
    path(
        "drafts/<int:draft_id>/regions/<int:index>.jpg",
        views.draft_region,
        name="draft-region",
    ),
    path("slides/<int:image_id>.dzi", views.slide_dzi, name="slide-dzi"),
    path(
        "slides/<int:image_id>_files/<int:level>/<int:col>_<int:row>.jpeg",
        views.slide_tile,
        name="slide-tile",
    ),
    path("account/tokens/", api_views.token_list, name="account-tokens"),
    path(
        "account/tokens/<int:token_id>/revoke/",
        api_views.token_revoke,
        name="account-token-revoke",
    ),
    path("api/", api.urls),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
