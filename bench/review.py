"""The review workbench at 10,000 and at 1,000,000 tasks: decide-and-next and the pages.

    python bench/review.py [--big 1000000] [--small 10000] [--decisions 500] [--pages 60]

Needs PostgreSQL on localhost (user postgres). Drops and creates the database
`medannot_bench_review` (--db), migrates it, then loads two projects of drafted tasks with
PostgreSQL COPY (images, tasks and drafts; counters set), and measures in-process with
Django's test Client, as a logged-in pathologist, with production settings (DEBUG off):

- decide and next: --decisions htmx accepts through the claimed queue (after a warm-up),
  p50 and p95, and the SQL statements per decision (counted in 20 more, not timed). As in
  the browser, the page first asks for the next task to be claimed and rendered ahead
  (`review-ahead`, timed apart as render_ahead: the reviewer is reading meanwhile); then
  --decisions / 2 "cold" decisions, without it (the decision claims and renders);
- the project list, the project page, the review page and the insights page (--pages
  requests each);
- a trivial view behind login_required (bench/review_urls.py): the baseline, timed right
  after each timed decision (and among the pages for them).

It prints the EXPLAIN (ANALYZE, BUFFERS) of the claim query on the big project. The last
line is one JSON object: p50_ms, p95_ms (decide and next, big project), trivial_p95_ms,
ratio_to_trivial, growth_10k_to_1m, pages_growth_10k_to_1m (the worst page),
queries_per_decision (BEGIN and COMMIT included), the same for cold decisions
(cold_p95_ms, cold_ratio_to_trivial, queries_per_decision_cold), render_ahead_p95_ms, and
the figures of each project.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 50_000
COUNTED = 20  # decisions whose statements are counted (not timed)
FORM = "application/x-www-form-urlencoded"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", type=int, default=1_000_000, help="tasks of the big project")
    parser.add_argument("--small", type=int, default=10_000, help="tasks of the small project")
    parser.add_argument("--decisions", type=int, default=500, help="measured decisions")
    parser.add_argument("--warmup", type=int, default=30, help="decisions before measuring")
    parser.add_argument("--pages", type=int, default=60, help="requests per page")
    parser.add_argument("--db", default="medannot_bench_review")
    parser.add_argument("--redis", default="redis://localhost:6379/13")
    return parser.parse_args()


def fresh_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@localhost:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')


def setup_django(args: argparse.Namespace) -> None:
    os.environ["DATABASE_URL"] = f"postgresql://postgres@localhost:5432/{args.db}"
    os.environ["REDIS_URL"] = args.redis
    # Production settings: DEBUG off (it logs every statement and renders templates in debug
    # mode, which would time the logging). Statements are counted in a pass of their own.
    os.environ["DEBUG"] = "false"
    # In-process requests are plain HTTP: TLS (and its redirect) is the proxy's business.
    os.environ["SECURE_SSL_REDIRECT"] = "false"
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["DJANGO_SETTINGS_MODULE"] = "medannot.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# Loading with COPY ----------------------------------------------------------------------


def _copy_text(value) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def copy_rows(model, n: int, first_id: int, varying: dict, fixed: dict, bases=()) -> float:
    """COPY `n` rows of `model`, ids from `first_id`. `varying`: column -> a format string
    of row i, where {0} is the row's id and {1}, {2}... are `bases[k] + i`; `fixed`: column
    -> value; every other column gets its field default. Returns the seconds taken."""
    from django.db import connection
    from django.utils import timezone

    def constant(value) -> str:
        return _copy_text(value).replace("{", "{{").replace("}", "}}")

    now = timezone.now().isoformat()
    columns, parts = ["id"], ["{0}"]
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.column in varying:
            parts.append(varying[field.column])
        elif field.column in fixed:
            parts.append(constant(fixed[field.column]))
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            parts.append(now)
        else:
            parts.append(constant(field.get_default()))
    line = "\t".join(parts) + "\n"
    table = model._meta.db_table
    started = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3
        with raw.copy(f'COPY "{table}" ({", ".join(columns)}) FROM STDIN') as copy:
            for start in range(0, n, CHUNK):
                rows = range(start, min(n, start + CHUNK))
                copy.write(
                    "".join(line.format(first_id + i, *(b + i for b in bases)) for i in rows)
                )
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), %s)", [first_id + n]
        )
    return time.perf_counter() - started


def next_id(model) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f'SELECT COALESCE(max(id), 0) + 1 FROM "{model._meta.db_table}"')
        return cursor.fetchone()[0]


def load_project(name: str, n: int, reviewer) -> dict:
    """A project of `n` drafted tasks, one image and one draft each, loaded with COPY."""
    from django.db import connection, transaction

    from annotations import services
    from annotations.models import Draft, Image, ProjectCounters, Role, Task

    project = services.project_create(
        name=name, modality="pathology", members=[(reviewer, Role.PATHOLOGIST)]
    )
    image0, task0, draft0 = next_id(Image), next_id(Task), next_id(Draft)
    seconds = {}
    with transaction.atomic():
        seconds["images"] = copy_rows(
            Image,
            n,
            image0,
            varying={
                "sha256": "{0:064x}",
                "file": "images/bench/{0}.jpg",
                "original_name": "bench-{0}.jpg",
            },
            fixed={
                "size_bytes": 1000,
                "kind": "photo",
                "format": "jpeg",
                "width": 640,
                "height": 480,
            },
        )
        seconds["tasks"] = copy_rows(
            Task,
            n,
            task0,
            varying={"image_id": "{1}"},
            fixed={"project_id": project.pk, "state": "drafted", "attempt": 1},
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
                "text": "Invasive ductal carcinoma, grade 2, no lymphovascular invasion.",
                "backend": "bench",
                "model_id": "bench",
                "prompt": "Describe the specimen.",
                "tokens_in": 100,
                "tokens_out": 20,
                "seconds": 0.1,
            },
        )
        ProjectCounters.objects.filter(project=project).update(drafted=n)
    with connection.cursor() as cursor:
        for model in (Image, Task, Draft):
            cursor.execute(f'ANALYZE "{model._meta.db_table}"')
    return {"project": project, "task0": task0, "draft0": draft0, "load_s": seconds}


# Measuring ------------------------------------------------------------------------------


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "n": len(ordered),
    }


TASK_IN_AREA = re.compile(r'id="review-area" data-task="(\d+)"')


def measure(loaded: dict[str, dict], client, args, study_client=None) -> dict[str, dict]:
    """The figures of each project. Requests alternate between the projects (and the
    trivial view), so that a busy machine slows both sides alike. The statements of a
    decision are counted after the timed ones, in `COUNTED` more decisions. The insights
    page is asked by `study_client` (a researcher of both: a pathologist may not see it)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}
    labels = list(loaded)
    at = {}
    modes = ("ahead", "cold", "render_ahead", "trivial")
    ms = {(label, mode): [] for label in labels for mode in modes}
    trivial_url = reverse("bench-trivial")
    queries = {(label, mode): [] for label in labels for mode in ("ahead", "cold")}
    for label, one in loaded.items():
        response = client.post(reverse("review-start", args=[one["project"].pk]))
        at[label] = int(response["Location"].rstrip("/").rsplit("/", 1)[1])
    # As the browser does: while the reviewer reads a task, the page asks for the next one
    # to be claimed and rendered ahead ("ahead", timed apart: nobody waits on it); the
    # decision is then answered with it. "cold": the decision claims and renders the next
    # task itself (a reviewer faster than the page's request, or a lost claim).
    timed_ones = args.warmup + args.decisions
    plan = [("ahead", k) for k in range(timed_ones + COUNTED)]
    plan += [("cold", k) for k in range(args.warmup + args.decisions // 2 + COUNTED)]
    for mode, k in plan:
        runs = args.warmup + (args.decisions if mode == "ahead" else args.decisions // 2)
        for label, one in loaded.items():
            task_id = at[label]
            if mode == "ahead":
                ahead_url = reverse("review-ahead", args=[one["project"].pk])
                took, response = timed(
                    lambda: client.post(ahead_url, {"after": task_id}, HTTP_HX_REQUEST="true")  # noqa: B023
                )
                assert response.status_code == 204
                if args.warmup <= k < runs:
                    ms[label, "render_ahead"].append(took)
            draft_id = one["draft0"] + task_id - one["task0"]
            # Form-encoded, as htmx posts a form (the test client's default is multipart).
            data = urlencode({"decision": "accepted", "draft_id": draft_id, "queue": "1"})
            url = reverse("task-decide", args=[task_id])
            if k < runs:
                took, response = timed(lambda: client.post(url, data, FORM, **htmx))  # noqa: B023
                if k >= args.warmup:
                    ms[label, mode].append(took)
            else:
                with CaptureQueriesContext(connection) as captured:
                    response = client.post(url, data, FORM, **htmx)
                queries[label, mode].append(len(captured))
            assert response.status_code == 200, response.content[:500]
            at[label] = int(TASK_IN_AREA.search(response.content.decode()).group(1))
            if mode == "ahead" and args.warmup <= k < runs:
                # The baseline, right after each timed decision: the same moment of a
                # noisy machine (a block of its own at the end drifted by 2x between runs).
                took, _ = timed(lambda: client.get(trivial_url))
                ms[label, "trivial"].append(took)
    figures = {
        label: {
            "decide_and_next": summary(ms[label, "ahead"]),
            "decide_and_next_cold": summary(ms[label, "cold"]),
            "render_ahead": summary(ms[label, "render_ahead"]),
            "trivial_with_decisions": summary(ms[label, "trivial"]),
            "queries_per_decision": round(statistics.mean(queries[label, "ahead"]), 1),
            "queries_per_decision_cold": round(statistics.mean(queries[label, "cold"]), 1),
        }
        for label in loaded
    }
    for page in ("project_list", "project_page", "review_page", "insights", "trivial"):
        urls = {
            label: {
                "project_list": reverse("project-list"),
                "project_page": reverse("project-detail", args=[one["project"].pk]),
                "review_page": reverse("task-detail", args=[at[label]]),
                "insights": reverse("project-insights", args=[one["project"].pk]),
                "trivial": reverse("bench-trivial"),
            }[page]
            for label, one in loaded.items()
        }
        took_ms = {label: [] for label in loaded}
        asking = study_client if page == "insights" else client
        for k in range(5 + args.pages):
            for label, url in urls.items():
                took, response = timed(lambda: asking.get(url))  # noqa: B023
                assert response.status_code == 200, (url, response.status_code)
                if k >= 5:
                    took_ms[label].append(took)
        for label in loaded:
            figures[label][page] = summary(took_ms[label])
    return figures


def explain_claim(project, reviewer) -> str:
    """The EXPLAIN ANALYZE of the claim query (SELECT … FOR UPDATE SKIP LOCKED), rolled back."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from annotations import services
    from annotations.models import Claim

    with transaction.atomic():
        Claim.objects.filter(reviewer=reviewer).delete()  # else the held claim comes back
        with CaptureQueriesContext(connection) as queries:
            services.claim_next(project=project, reviewer=reviewer)
        claim_sql = next(q["sql"] for q in queries if "SKIP LOCKED" in q["sql"])
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + claim_sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return f"{claim_sql}\n{plan}"


def main() -> None:
    args = parse_args()
    fresh_database(args.db)
    setup_django(args)
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import override_settings

    reviewer = get_user_model().objects.create_user("bench-reader", password="x")
    loaded = {}
    for label, n in (("10k", args.small), ("1m", args.big)):
        ms, loaded[label] = timed(lambda: load_project(f"Bench {n}", n, reviewer))  # noqa: B023
        print(f"loaded {n} drafted tasks in {ms / 1000:.1f} s: {loaded[label]['load_s']}")
    client = Client()
    client.force_login(reviewer)
    from annotations import services
    from annotations.models import Role

    researcher = get_user_model().objects.create_user("bench-researcher", password="x")
    for one in loaded.values():
        services.membership_set(project=one["project"], user=researcher, role=Role.RESEARCHER)
    study_client = Client()
    study_client.force_login(researcher)
    plain_static = {  # no collectstatic needed: static URLs are not what is measured
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(
        ROOT_URLCONF="bench.review_urls", ALLOWED_HOSTS=["*"], STORAGES=plain_static
    ):
        results = measure(loaded, client, args, study_client)
    print("EXPLAIN ANALYZE of the claim query, 1M project:")
    print(explain_claim(loaded["1m"]["project"], reviewer))
    for label, figures in results.items():
        print(label, json.dumps(figures))
    big, small = results["1m"], results["10k"]
    # The baseline of the decisions: the trivial view timed right after each of them.
    trivial = max(big["trivial_with_decisions"]["p95_ms"], 1e-9)
    pages = ("project_list", "project_page", "review_page", "insights")
    out = {
        "p50_ms": big["decide_and_next"]["p50_ms"],
        "p95_ms": big["decide_and_next"]["p95_ms"],
        "trivial_p95_ms": big["trivial_with_decisions"]["p95_ms"],
        "trivial_p50_ms": big["trivial_with_decisions"]["p50_ms"],
        "ratio_p50_to_trivial": round(
            big["decide_and_next"]["p50_ms"] / big["trivial_with_decisions"]["p50_ms"], 2
        ),
        "ratio_to_trivial": round(big["decide_and_next"]["p95_ms"] / trivial, 2),
        "growth_10k_to_1m": round(
            big["decide_and_next"]["p95_ms"] / small["decide_and_next"]["p95_ms"], 2
        ),
        "pages_growth_10k_to_1m": round(
            max(big[p]["p95_ms"] / small[p]["p95_ms"] for p in pages), 2
        ),
        "queries_per_decision": big["queries_per_decision"],
        # Without the next task rendered ahead (the decision claims and renders it):
        "cold_p95_ms": big["decide_and_next_cold"]["p95_ms"],
        "cold_ratio_to_trivial": round(big["decide_and_next_cold"]["p95_ms"] / trivial, 2),
        "queries_per_decision_cold": big["queries_per_decision_cold"],
        # The request that renders it ahead, while the reviewer reads (nobody waits on it):
        "render_ahead_p95_ms": big["render_ahead"]["p95_ms"],
        "pages_p95_ms_1m": {p: big[p]["p95_ms"] for p in pages},
        "pages_p95_ms_10k": {p: small[p]["p95_ms"] for p in pages},
        "decide_p95_ms_10k": small["decide_and_next"]["p95_ms"],
        "tasks": {"small": args.small, "big": args.big},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
