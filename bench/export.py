"""The label export against PostgreSQL COPY of the same rows, and its memory.

    python bench/export.py [--rows 1000000] [--format jsonl|csv] [--history]

Needs PostgreSQL on localhost (user postgres). Drops and creates the database
`medannot_bench_export` (--db), migrates it, and loads one project of --rows labels with
PostgreSQL COPY (images, tasks, drafts and labels: one reading per task, the draft written by
a model in a server folder). Then, with production settings (DEBUG off):

- the baseline: `COPY (SELECT the labels joined to their task, image, draft, reviewer and
  prompt template) TO STDOUT WITH CSV` into a temporary file (the best of two runs);
- the export: `annotations.exports.write_export` (what the export view and `export_labels`
  use) into a temporary file, in a fresh process of its own, which reports its peak resident
  set size (VmHWM of /proc/self/status: the whole process, Python, Django and the export;
  getrusage's ru_maxrss would carry over the loading parent's), and its peak before exporting.

The last line is one JSON object: rows, seconds, copy_seconds, ratio_to_copy, peak_rss_mb,
rss_before_mb, bytes, format.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.review import copy_rows, fresh_database, next_id  # noqa: E402

PROJECT = "Bench export"
TEXT = 'Invasive ductal carcinoma, grade 2 — "no" lymphovascular invasion.\nMargins clear.'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="labels to export")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "csv"])
    parser.add_argument("--history", action="store_true", help="export with ?history=1")
    parser.add_argument("--db", default="medannot_bench_export")
    parser.add_argument("--redis", default="redis://localhost:6379/13")
    # Internal: the measured export, run in a process of its own.
    parser.add_argument("--export-only", metavar="OUT", help=argparse.SUPPRESS)
    return parser.parse_args()


def setup_django(args: argparse.Namespace, *, migrate: bool) -> None:
    os.environ["DATABASE_URL"] = f"postgresql://postgres@localhost:5432/{args.db}"
    os.environ["REDIS_URL"] = args.redis
    os.environ["DEBUG"] = "false"  # production settings: DEBUG would keep every statement
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    os.environ["DJANGO_SETTINGS_MODULE"] = "medannot.settings"
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def rss_mb() -> float:
    """This process's peak resident set size (VmHWM). Not getrusage's ru_maxrss, which an
    exec'd child inherits from its parent (here: the loading process)."""
    status = Path("/proc/self/status").read_text()
    if "VmHWM:" in status:
        kib = int(status.split("VmHWM:", 1)[1].split()[0])
    else:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def load(n: int) -> dict:
    """One project of `n` labelled tasks (one reading each), loaded with COPY."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotations import services
    from annotations.models import Draft, Image, Label, ProjectCounters, Role, Task

    reviewer = get_user_model().objects.create_user("bench-reader", password="x")
    project = services.project_create(
        name=PROJECT, modality="pathology", members=[(reviewer, Role.PATHOLOGIST)]
    )
    image0, task0, draft0, label0 = next_id(Image), next_id(Task), next_id(Draft), next_id(Label)
    seconds = {}
    with transaction.atomic():
        seconds["images"] = copy_rows(
            Image,
            n,
            image0,
            varying={
                "sha256": "{0:064x}",
                "file": "images/bench/{0}.svs",
                "original_name": "bench-{0}.svs",
            },
            fixed={
                "size_bytes": 1000,
                "kind": "slide",
                "format": "svs",
                "width": 40000,
                "height": 30000,
                "levels": 3,
                "mpp_x": 0.25,
                "mpp_y": 0.25,
                "vendor": "aperio",
                "objective_power": 40.0,
                "level_dimensions": [[40000, 30000], [10000, 7500], [2500, 1875]],
            },
        )
        seconds["tasks"] = copy_rows(
            Task,
            n,
            task0,
            varying={"image_id": "{1}"},
            fixed={
                "project_id": project.pk,
                "state": "drafted",
                "attempt": 1,
                "review_state": "final",
                "outcome": "edited",
                "metadata": {"organ": "breast", "procedure": "core biopsy"},
            },
            bases=[image0],
        )
        seconds["drafts"] = copy_rows(
            Draft,
            n,
            draft0,
            varying={"task_id": "{1}"},
            bases=[task0],
            fixed={
                "attempt": 1,
                "text": "Invasive ductal carcinoma, grade 2.",
                "backend": "transformers",
                "model_id": "/srv/models/medgemma-1.5-4b-it",
                "model_revision": "sha256:0123456789abcdef",
                "prompt": "Describe the specimen.",
                "generation": {"do_sample": False, "max_new_tokens": 512},
                "tokens_in": 100,
                "tokens_out": 20,
                "seconds": 0.1,
            },
        )
        seconds["labels"] = copy_rows(
            Label,
            n,
            label0,
            varying={"task_id": "{1}", "draft_id": "{2}"},
            bases=[task0, draft0],
            fixed={
                "reviewer_id": reviewer.pk,
                "decision": "edited",
                "text": TEXT,
                "category": "missed finding",
                "edit_chars": 50,
                "edit_words": 8,
                "time_on_task_ms": 41000,
            },
        )
        ProjectCounters.objects.filter(project=project).update(drafted=n, edited=n, labels=n)
    with connection.cursor() as cursor:
        for model in (Image, Task, Draft, Label):
            cursor.execute(f'VACUUM ANALYZE "{model._meta.db_table}"')
    return seconds


# The baseline: the same joined rows, as PostgreSQL itself writes them.
COPY_SQL = """
COPY (
    SELECT l.task_id, i.original_name, i.sha256, i.format, i.vendor, i.width, i.height,
           i.levels, i.level_dimensions, i.mpp_x, i.mpp_y, i.objective_power,
           l.decision, l.text, l.reason, l.category, l.edit_chars, l.edit_words,
           l.time_on_task_ms, l.fast_accept, u.username, l.created_at, l.updated_at,
           d.id, d.text, d.created_at, d.model_id, d.model_revision, d.backend, d.prompt,
           pt.version, d.truncated, l.regions, d.regions, t.metadata, d.generation
    FROM annotations_label l
    JOIN annotations_task t ON t.id = l.task_id
    JOIN annotations_image i ON i.id = t.image_id
    JOIN annotations_draft d ON d.id = l.draft_id
    JOIN auth_user u ON u.id = l.reviewer_id
    LEFT JOIN annotations_prompttemplate pt ON pt.id = d.prompt_template_id
    WHERE t.project_id = %s
    ORDER BY l.task_id, l.id
) TO STDOUT WITH CSV
"""


def copy_to(path: Path, project_id: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor, path.open("wb") as out:
        with cursor.cursor.copy(COPY_SQL, [project_id]) as copy:
            for block in copy:
                out.write(block)
    return time.perf_counter() - started


def export_only(args: argparse.Namespace) -> None:
    """The measured export, alone in this process; prints its figures as JSON."""
    setup_django(args, migrate=False)
    from annotations import exports
    from annotations.models import Project

    project = Project.objects.get(name=PROJECT)
    before = rss_mb()
    started = time.perf_counter()
    with open(args.export_only, "w", encoding="utf-8", newline="") as out:
        rows = exports.write_export(project, out, format=args.format, history=args.history)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "peak": rss_mb(), "before": before}))


def main() -> None:
    args = parse_args()
    if args.export_only:
        export_only(args)
        return
    fresh_database(args.db)
    setup_django(args, migrate=True)
    from annotations.models import Project

    started = time.perf_counter()
    load_s = load(args.rows)
    print(f"loaded {args.rows} labels in {time.perf_counter() - started:.1f} s: {load_s}")
    project = Project.objects.get(name=PROJECT)
    with tempfile.TemporaryDirectory() as tmp:
        copied, exported = Path(tmp) / "copy.csv", Path(tmp) / f"export.{args.format}"
        copy_seconds = min(copy_to(copied, project.pk) for _ in range(2))
        print(f"COPY: {copy_seconds:.2f} s, {copied.stat().st_size} bytes")
        argv = [sys.executable, __file__, "--export-only", str(exported), "--db", args.db]
        argv += ["--format", args.format, "--redis", args.redis]
        argv += ["--history"] if args.history else []
        child = subprocess.run(argv, capture_output=True, text=True, check=False)
        if child.returncode:
            sys.exit(child.stdout + child.stderr)
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        size = exported.stat().st_size
    print(f"export: {figures['seconds']:.2f} s, {size} bytes, peak RSS {figures['peak']} MB")
    out = {
        "rows": figures["rows"],
        "seconds": round(figures["seconds"], 2),
        "copy_seconds": round(copy_seconds, 2),
        "ratio_to_copy": round(figures["seconds"] / copy_seconds, 2),
        "peak_rss_mb": figures["peak"],
        "rss_before_mb": figures["before"],
        "bytes": size,
        "format": args.format,
        "history": args.history,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
