"""verify_audit against a plain streaming SELECT of the same rows.

    python bench/audit.py [--rows 1000000]

Needs PostgreSQL on localhost (user postgres). Drops and creates the database
`medannot_bench_audit` (--db), migrates it, and loads --rows audit rows with PostgreSQL COPY
(the chain trigger hashes each one, as on any insert; the load time is printed). Then, in
the same run:

- the baseline: the rows that verify_audit reads, streamed with a server-side cursor in id
  order and dropped (the best of two runs);
- verify_audit itself (every hash recomputed in Python, every link checked).

The last line is one JSON object: rows, load_seconds, select_seconds, verify_seconds,
rows_per_second, ratio_to_select.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.review import fresh_database  # noqa: E402

BEFORE = '{"state": "drafted", "text": "Invasive ductal carcinoma, grade 2 — \\"no\\" LVI."}'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", default="medannot_bench_audit")
    parser.add_argument("--redis", default="redis://localhost:6379/13")
    return parser.parse_args()


def setup_django(args: argparse.Namespace) -> None:
    os.environ["DATABASE_URL"] = f"postgresql://postgres@localhost:5432/{args.db}"
    os.environ["REDIS_URL"] = args.redis
    os.environ["DEBUG"] = "false"  # DEBUG would keep every statement
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    os.environ["DJANGO_SETTINGS_MODULE"] = "medannot.settings"
    import django

    django.setup()


def load(n: int) -> float:
    """COPY `n` audit rows: decisions with before and after, numbers, quotes and unicode."""
    from django.db import connection, transaction

    started = time.perf_counter()
    columns = "(at, action, project_id, task_id, before, after, reason)"
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.copy(f"COPY annotations_auditevent {columns} FROM STDIN") as copy:
            for i in range(n):
                after = json.dumps({"decision": "edited", "revision": i % 7, "score": 1.0})
                copy.write_row(
                    (
                        "2026-11-30 04:00:00+00",
                        "label.record",
                        None,
                        None,
                        BEFORE,
                        after,
                        f"row {i}: «ok»",
                    )
                )
    return time.perf_counter() - started


def stream_plain() -> float:
    from django.db import connection, transaction

    from annotations.management.commands.verify_audit import _ROWS, BATCH

    started = time.perf_counter()
    with transaction.atomic(), connection.connection.cursor(name="bench") as cursor:
        cursor.itersize = BATCH
        cursor.execute(_ROWS, [0])
        for _ in cursor:
            pass
    return time.perf_counter() - started


def verify() -> float:
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("verify_audit", stdout=io.StringIO())
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    fresh_database(args.db)
    setup_django(args)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    load_s = load(args.rows)
    print(f"loaded {args.rows} rows with COPY (chained by the trigger) in {load_s:.1f} s")
    select_s = min(stream_plain(), stream_plain())
    print(f"plain SELECT, streamed: {select_s:.2f} s")
    verify_s = verify()
    rate = args.rows / verify_s
    print(
        f"verify_audit: {verify_s:.2f} s, {rate:.0f} rows/s, {verify_s / select_s:.1f}x the SELECT"
    )
    out = {
        "rows": args.rows,
        "load_seconds": round(load_s, 2),
        "select_seconds": round(select_s, 2),
        "verify_seconds": round(verify_s, 2),
        "rows_per_second": round(rate),
        "ratio_to_select": round(verify_s / select_s, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
