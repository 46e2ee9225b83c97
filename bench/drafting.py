"""Drafting throughput at batch sizes 1, 2, 4 and 8, through the real queue and worker.

    python bench/drafting.py [--tasks 16] [--sizes 1,2,4,8] [--model DIR]

Builds a demo Gemma 3 of tens of millions of parameters (one batch's generate takes seconds
on a CPU, as MedGemma's does on a GPU) unless --model or MEDANNOT_MODEL names real weights,
queues the same photos and slides at each batch size, lets a real Celery worker on Redis
draft them, and prints drafts per second per size. Batch size 1 is the baseline measured in
the same run. The last line is one JSON object.

idle_share is the share of the worker's wall time at the largest batch size (from its first
claim to its last stored draft) during which no generate call was running: waiting on the
queue, reading images, cutting patches, writing to the database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_MODEL = dict(
    hidden_size=512,
    intermediate_size=2048,
    num_layers=6,
    num_heads=8,
    num_kv_heads=2,
    head_dim=64,
    vision_hidden_size=256,
    vision_intermediate_size=1024,
    vision_num_layers=4,
    vision_num_heads=4,
    image_size=224,
    patch_size=14,
    mm_tokens_per_image=64,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=32, help="drafts per batch size")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default=os.environ.get("MEDANNOT_MODEL", ""))
    return parser.parse_args()


def setup_environment(args) -> dict[str, str]:
    """A database, Redis db and media folder of the benchmark's own; Django configured."""
    media = Path(tempfile.mkdtemp(prefix="medannot-bench-"))
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@localhost:5432/medannot")
    env = {
        "DATABASE_URL": base.rsplit("/", 1)[0] + "/medannot_bench",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/13"),
        "MEDIA_ROOT": str(media),
        "MEDANNOT_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "DJANGO_SETTINGS_MODULE": "medannot.settings",
        "DEBUG": os.environ.get("DEBUG", "true"),  # development settings: no SECRET_KEY needed
        "LOG_LEVEL": "WARNING",
    }
    if not args.model:
        model_dir = ROOT / "var" / "bench-model"
        if not (model_dir / "config.json").exists():
            from inference.demo_model import build_demo_model

            print(f"building the benchmark model in {model_dir} ...", flush=True)
            build_demo_model(model_dir, **BENCH_MODEL)
        args.model = str(model_dir)
    env["MEDANNOT_MODEL"] = args.model
    os.environ.update(env)
    import django

    from medannot import preflight

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    problem = preflight.check_postgres(settings.DATABASES["default"]) or preflight.check_redis(
        settings.REDIS_URL
    )
    if problem:
        sys.exit(f"ERROR: {problem}")
    from django.db import connection

    with connection.cursor() as cursor:  # a clean slate: drafts of earlier runs would mix in
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    call_command("migrate", verbosity=0)
    return env


def sample_files(n: int) -> list[Path]:
    from imaging import samples

    folder = Path(tempfile.mkdtemp(prefix="medannot-bench-samples-"))
    files = []
    for i in range(n):
        if i % 4 == 3:  # one slide in four
            files.append(
                samples.write_synthetic_slide(
                    folder / f"slide-{i}.tiff", width=6144, height=4096, mpp=0.5, seed=i
                )
            )
        else:
            files.append(samples.write_derm_photo(folder / f"photo-{i}.jpg", seed=i))
    return files


def start_worker(env: dict[str, str], batch_size: int, log: Path) -> subprocess.Popen:
    from medannot.celery import app, worker_argv

    hostname = f"bench-{batch_size}-{os.getpid()}@localhost"
    proc = subprocess.Popen(
        worker_argv(hostname, loglevel="WARNING"),
        cwd=ROOT,
        env=os.environ | env | {"MEDANNOT_BATCH_SIZE": str(batch_size)},
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the worker did not start:\n{log.read_text()[-3000:]}")
    return proc


def queue_project(name: str, files: list[Path], modality: str = "dermatology"):
    """Ingest every file first, then queue them all: a backlog, as after a bulk upload."""
    from django.db import transaction

    from annotations import services

    project = services.project_create(
        name=name,
        modality=modality,
        slide_settings={"max_patches": 4, "patch_size": 896, "target_mpp": 1.0},
    )
    tasks = []
    for path in files:
        result = services.image_ingest(
            project=project, source=path, original_name=path.name, enqueue=False
        )
        assert result.ok, result.message
        tasks.append(result.task)
    with transaction.atomic():  # every message leaves after the commit, together
        for task in tasks:
            services.task_enqueue(task_id=task.pk)
    return project


def wait_drafted(project, n: int, timeout: float = 1800) -> None:
    from annotations.models import Task

    deadline = time.monotonic() + timeout
    while Task.objects.filter(project=project, state__in=["drafted", "failed"]).count() < n:
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for drafts")
        time.sleep(0.2)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def measure(env, files, batch_size: int, log: Path) -> dict:
    from annotations.models import AuditEvent, Draft, Task
    from medannot.celery import app

    app.control.purge()
    worker = start_worker(env, batch_size, log)
    try:
        warm = queue_project(f"warm-up {batch_size} {time.time()}", files[:1])
        wait_drafted(warm, 1)  # the model loads on the first message, outside the figure
        project = queue_project(f"bench {batch_size} {time.time()}", files)
        sent = time.time()
        wait_drafted(project, len(files))
        done = time.time()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    failed = list(
        Task.objects.filter(project=project, state="failed").values_list("error", flat=True)
    )
    if failed:
        sys.exit(f"{len(failed)} drafts failed: {failed[:3]}")
    drafts = list(Draft.objects.filter(task__project=project))
    first_claim = (
        AuditEvent.objects.filter(
            task__project=project, action="task.state", after__state="drafting"
        )
        .order_by("at")
        .first()
        .at.timestamp()
    )
    last_draft = max(d.created_at.timestamp() for d in drafts)
    busy = union_seconds(
        [
            (d.generation["generate_started"], d.generation["generate_started"] + d.seconds)
            for d in drafts
        ]
    )
    worker_wall = last_draft - first_claim
    return {
        "batch_size": batch_size,
        "drafts": len(drafts),
        "seconds": done - sent,
        "drafts_per_second": len(drafts) / (done - sent),
        "idle_share": max(0.0, 1 - busy / worker_wall) if worker_wall > 0 else 0.0,
        "mean_generate_seconds": sum(d.seconds for d in drafts) / len(drafts),
        "tokens_out": sum(d.tokens_out for d in drafts),
    }


def main() -> None:
    args = parse_args()
    env = setup_environment(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    files = sample_files(args.tasks)
    log = Path(tempfile.mkdtemp(prefix="medannot-bench-log-")) / "worker.log"
    import torch

    print(
        f"model {args.model} | torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}",
        flush=True,
    )
    results = {}
    for size in sizes:
        r = measure(env, files, size, log)
        results[size] = r
        print(
            f"batch size {size}: {r['drafts']} drafts in {r['seconds']:.1f} s = "
            f"{r['drafts_per_second']:.2f} drafts/s; idle {100 * r['idle_share']:.1f} %; "
            f"generate {r['mean_generate_seconds']:.2f} s a batch",
            flush=True,
        )
    base, top = results[sizes[0]], results[sizes[-1]]
    summary = {
        "drafts": sum(r["drafts"] for r in results.values()),
        "per_batch_size": {str(s): round(r["drafts_per_second"], 3) for s, r in results.items()},
        f"speedup_{sizes[-1]}_vs_{sizes[0]}": round(
            top["drafts_per_second"] / base["drafts_per_second"], 2
        ),
        "idle_share": round(top["idle_share"], 3),
        "idle_share_baseline": round(base["idle_share"], 3),
        "model": args.model,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(
        f"baseline (batch size {sizes[0]}): {base['drafts_per_second']:.2f} drafts/s; "
        f"ours (batch size {sizes[-1]}): {top['drafts_per_second']:.2f} drafts/s"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
