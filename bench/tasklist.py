"""The task list at 200,000 tasks: page 1 against page 1,000, for a few filters and sorts.

    python bench/tasklist.py [--tasks 200000] [--page 1000] [--runs 15]

Needs PostgreSQL on localhost (user postgres). Drops and creates the database
`medannot_bench_tasklist` (--db), migrates it, loads one project of drafted tasks with COPY
(bench/review.py's loader), then gives them manifests (three organs) and a reading by one
pathologist on the first half (fast accepts). As a project admin, in-process with Django's
test Client and DEBUG off, it times the list's page 1 and page --page (its cursor built from
the row just before it, as the Next link of page --page - 1 carries it), --runs requests
each, alternating with a trivial view behind login_required: the baseline.

It prints the EXPLAIN (ANALYZE, BUFFERS) of the far page of each case, then one JSON object
last: per case p50/p95 of page 1 and page N and their ratio, page 1 against the trivial view,
the trivial view's, and the worst of both ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.review import (  # noqa: E402 (after the path)
    copy_rows,
    fresh_database,
    load_project,
    next_id,
    setup_django,
    summary,
    timed,
)

# Each case: the list's GET parameters.
CASES = {
    "id_asc": {},
    "name_desc": {"sort": "name", "dir": "desc"},
    "manifest_field": {"q": "organ:colon"},
    "file_name_words": {"q": "bench-1"},
    "readings_desc": {"sort": "readings", "dir": "desc"},
    "decided_desc": {"sort": "decided", "dir": "desc"},
    "prompt_asc": {"sort": "prompt"},
    "reviewer_fast_by_decision": {
        "reviewer": "bench-reader",
        "flag": "fast_accept",
        "sort": "decided",
        "dir": "desc",
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--page", type=int, default=1000, help="the far page")
    parser.add_argument("--runs", type=int, default=15, help="requests per page and case")
    parser.add_argument("--db", default="medannot_bench_tasklist")
    parser.add_argument("--redis", default="redis://localhost:6379/13")
    return parser.parse_args()


def load(n: int) -> dict:
    """The project, its manifests and the readings of its first half."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotations import services, tasklist
    from annotations.models import Label, Role

    users = get_user_model().objects
    reader = users.create_user("bench-reader", password="x")
    loaded = load_project("Bench task list", n, reader)
    admin = users.create_user("bench-admin", password="x")
    services.membership_set(project=loaded["project"], user=admin, role=Role.ADMIN)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotations_task SET metadata = jsonb_build_object('organ', "
            "(ARRAY['breast','colon','lung'])[id %% 3 + 1], 'block', (id %% 40)::text) "
            "WHERE project_id = %s",
            [loaded["project"].pk],
        )
        copy_rows(
            Label,
            n // 2,
            next_id(Label),
            varying={"task_id": "{1}", "draft_id": "{2}"},
            bases=[loaded["task0"], loaded["draft0"]],
            fixed={
                "reviewer_id": reader.pk,
                "decision": "accepted",
                "text": "Invasive ductal carcinoma, grade 2.",
                "fast_accept": True,
                "edit_chars": 0,
                "edit_words": 0,
            },
        )
    # The rows were made with COPY: the list's stored columns as the repair sets them.
    tasklist.columns_rebuild([loaded["project"].pk])
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE annotations_task")
        cursor.execute("VACUUM ANALYZE annotations_label")
    return {**loaded, "admin": admin}


def far_cursor(project, admin, params: dict, page: int) -> str | None:
    """The cursor of page `page`: the key and id of the last row of page `page` - 1 (found
    here once with OFFSET; the list itself never uses one)."""
    from django.http import QueryDict

    from annotations import tasklist

    f = tasklist.filter_from(QueryDict(urlencode(params)), categories=project.correction_categories)
    tasks = tasklist.tasks_matching(project, f, user=admin, blind=False)
    column = tasklist.SORTS[f.sort]
    order = [f"-{column}", "-id"] if f.desc else [column, "id"]
    row = tasks.order_by(*order)[
        (page - 1) * tasklist.PER_PAGE - 1 : (page - 1) * tasklist.PER_PAGE
    ]
    rows = list(row)
    return tasklist._cursor_of(rows[0], f.sort) if rows else None


def explain(project, admin, params: dict, cursor: str | None) -> str:
    from django.db import connection
    from django.http import QueryDict

    from annotations import tasklist

    f = tasklist.filter_from(QueryDict(urlencode(params)), categories=project.correction_categories)
    captured = []

    def keep(execute, sql, sql_params, many, context):
        if "annotations_task" in sql and sql.lstrip().upper().startswith("SELECT"):
            captured.append((sql, sql_params))
        return execute(sql, sql_params, many, context)

    tasks = tasklist.tasks_matching(project, f, user=admin, blind=False)
    with connection.execute_wrapper(keep):
        tasklist.task_page(tasks, f, after=cursor or "")
    sql, sql_params = captured[-1]
    with connection.cursor() as c:
        c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, sql_params)
        return "\n".join(row[0] for row in c.fetchall())


def measure(loaded: dict, client, args) -> dict:
    from django.urls import reverse

    project, admin = loaded["project"], loaded["admin"]
    url = reverse("project-tasks", args=[project.pk])
    figures = {}
    trivial = []
    for name, params in CASES.items():
        cursor = far_cursor(project, admin, params, args.page)
        far = {**params, "after": cursor} if cursor else None
        ms = {"page_1": [], "page_n": []}
        for k in range(args.runs + 2):  # two warm-ups
            took_1, first = timed(lambda: client.get(url + "?" + urlencode(params)))  # noqa: B023
            took_n, last = timed(lambda: client.get(url + "?" + urlencode(far or params)))  # noqa: B023
            took_t, _ = timed(lambda: client.get("/bench/trivial/"))
            assert first.status_code == last.status_code == 200
            if k >= 2:
                ms["page_1"].append(took_1)
                ms["page_n"].append(took_n)
                trivial.append(took_t)
        page_1, page_n = summary(ms["page_1"]), summary(ms["page_n"])
        figures[name] = {
            "page_1": page_1,
            # Against the trivial view measured alongside (a sort that scans every task
            # shows here, not in the page-N ratio).
            "page_1_to_trivial_p50": round(page_1["p50_ms"] / summary(trivial)["p50_ms"], 2),
            f"page_{args.page}": page_n if far else None,
            "ratio_p50": round(page_n["p50_ms"] / page_1["p50_ms"], 2) if far else None,
        }
        print(f"EXPLAIN ANALYZE, {name}, page {args.page}:")
        print(explain(project, admin, params, cursor))
    figures["trivial"] = summary(trivial)
    return figures


def main() -> None:
    args = parse_args()
    fresh_database(args.db)
    setup_django(args)
    from django.test import Client
    from django.test.utils import override_settings

    ms, loaded = timed(lambda: load(args.tasks))
    print(f"loaded {args.tasks} tasks in {ms / 1000:.1f} s")
    client = Client()
    client.force_login(loaded["admin"])
    plain_static = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(
        ROOT_URLCONF="bench.review_urls", ALLOWED_HOSTS=["*"], STORAGES=plain_static
    ):
        figures = measure(loaded, client, args)
    ratios = [c["ratio_p50"] for c in figures.values() if c.get("ratio_p50")]
    out = {
        "tasks": args.tasks,
        "far_page": args.page,
        "trivial_p50_ms": figures["trivial"]["p50_ms"],
        "worst_page_n_to_page_1": max(ratios) if ratios else None,
        "worst_page_1_to_trivial": max(
            c["page_1_to_trivial_p50"] for k, c in figures.items() if k != "trivial"
        ),
        "cases": {k: v for k, v in figures.items() if k != "trivial"},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
