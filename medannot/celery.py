"""The Celery app: configured from Django settings (CELERY_*), tasks autodiscovered."""

import os
import subprocess
import sys

from celery import Celery, signals

from annotations.queues import GPU_QUEUE

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medannot.settings")

app = Celery("medannot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def worker_argv(hostname: str, *, queues: str = GPU_QUEUE, loglevel: str = "INFO") -> list[str]:
    """The command line of a drafting worker: one process, prefork so that a lost pool
    process is noticed (reject_on_worker_lost), no gossip or mingle to wait for."""
    return [
        sys.executable, "-m", "celery", "-A", "medannot", "worker", "-Q", queues,
        "--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle",
        "-n", hostname, "--loglevel", loglevel,
    ]  # fmt: skip


_CUDA_CHECK = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"


@signals.worker_init.connect
def refuse_cuda_worker_without_gpu(**kwargs) -> None:
    """A worker configured for CUDA that finds no GPU stops at once, with a clear message,
    instead of drafting hundreds of times slower on the CPU. Checked in a subprocess so
    that CUDA is never initialised in the parent before the pool forks."""
    from django.conf import settings

    device = settings.MEDANNOT_DEVICE or ""
    if not device.startswith("cuda"):
        return
    check = subprocess.run([sys.executable, "-c", _CUDA_CHECK], capture_output=True, text=True)
    if check.returncode != 0:
        message = (
            f"MEDANNOT_DEVICE={device} but no CUDA device is visible to this worker: check the "
            "NVIDIA driver, CUDA_VISIBLE_DEVICES, the container's GPU reservation, and that "
            "torch was installed with CUDA. Refusing to start."
        )
        print(f"ERROR: {message}", file=sys.stderr, flush=True)
        os._exit(3)  # Celery swallows exceptions from worker_init; leave for real
