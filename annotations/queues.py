"""The worker's Celery task and queue names. The web queues work by name (`send_task`),
so it never imports the worker."""

GPU_QUEUE = "gpu"  # drafting: one process per GPU
DRAFT_TASK = "inference.tasks.draft_task"
SWEEP_TASK = "inference.tasks.sweep_task"
