"""The worker's Celery task and queue names. The web queues work by name (`send_task`),
so it never imports the worker."""

GPU_QUEUE = "gpu"  # drafting: one process per GPU
DEFAULT_QUEUE = "celery"  # light work (sweeps), on a worker of its own: never behind a draft
DRAFT_TASK = "inference.tasks.draft_task"
# A blind comparison's candidate draft: one task redrafted with another prompt, kept apart.
COMPARISON_DRAFT_TASK = "inference.tasks.comparison_draft_task"
SWEEP_TASK = "inference.tasks.sweep_task"
TMP_SWEEP_TASK = "inference.tasks.sweep_tmp_task"
CLAIM_SWEEP_TASK = "inference.tasks.sweep_claims_task"  # abandoned review claims
PREVIEW_TASK = "inference.tasks.preview_task"  # previews and thumbnails, on the CPU queue
EXPORT_TASK = "inference.tasks.export_task"  # large exports, written to a file, on the CPU queue
EXPORT_SWEEP_TASK = "inference.tasks.sweep_exports_task"  # expired export files
