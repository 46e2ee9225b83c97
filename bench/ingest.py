"""Ingest: `import_images` against a bare decode and hash of the same photos.

    python bench/ingest.py [--files 1000] [--width 1024] [--height 768] [--profile out.prof]

Needs PostgreSQL (user postgres) and Redis on localhost. Drops and creates the database
`medannot_bench_ingest` (--db), migrates it, with production settings (DEBUG off, a bench
SECRET_KEY) and a temporary MEDIA_ROOT. Writes --files JPEG photos of varied content into a
temporary folder, then times:

- the baseline: a bare loop over the same files, each opened with Pillow, fully decoded
  (`im.load()`) and its bytes hashed (sha256);
- `import_images FOLDER --project P` into a fresh project (drafts queued: the messages go
  to a Redis database of the bench's own, --redis, emptied before and after).

The statements are counted in a second import of --count files into another project (not
timed). The last line is one JSON object: files, seconds, bare_decode_seconds,
ratio_to_decode, queries_per_file.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="photos imported")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--count", type=int, default=100, help="files of the counted import")
    parser.add_argument("--db", default="medannot_bench_ingest")
    parser.add_argument("--redis", default="redis://localhost:6379/14")
    parser.add_argument("--profile", help="write a cProfile of the timed import here")
    return parser.parse_args()


def fresh_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@localhost:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')


def setup_django(args: argparse.Namespace, media: Path) -> None:
    os.environ["DATABASE_URL"] = f"postgresql://postgres@localhost:5432/{args.db}"
    os.environ["REDIS_URL"] = args.redis
    os.environ["DEBUG"] = "false"  # production settings: no statement logging
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    os.environ["MEDIA_ROOT"] = str(media)
    os.environ["DJANGO_SETTINGS_MODULE"] = "medannot.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    """`n` JPEGs of varied content (gradients, shapes and noise), all of different bytes."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    width, height = size
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    for i in range(n):
        base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        tint = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
        picture = Image.blend(Image.blend(base, tint, 0.5), noise, 0.2)
        draw = ImageDraw.Draw(picture)
        for _ in range(12):
            x, y = rng.randrange(width), rng.randrange(height)
            r = rng.randrange(10, 120)
            colour = tuple(rng.randrange(256) for _ in range(3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        draw.text((10, 10), f"photo {seed}-{i}", fill=(255, 255, 255))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=90)
        (folder / f"photo-{i:05d}.jpg").write_bytes(out.getvalue())


def bare_decode(files: list[Path]) -> float:
    """Open, fully decode and hash every file: the floor an import is measured against."""
    from PIL import Image

    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(path) as im:
            im.load()
    return time.perf_counter() - started


def import_folder(folder: Path, project_name: str) -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("import_images", str(folder), "--project", project_name, stdout=out)
    return out.getvalue()


def run(args: argparse.Namespace, work: Path) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotations import services
    from annotations.models import Task

    photos, counted = work / "photos", work / "counted"
    photos.mkdir()
    counted.mkdir()
    started = time.perf_counter()
    write_photos(photos, args.files, (args.width, args.height), seed=1)
    write_photos(counted, args.count, (args.width, args.height), seed=2)
    total_mb = sum(p.stat().st_size for p in photos.iterdir()) / 1e6
    print(f"wrote {args.files} photos ({total_mb:.1f} MB) in {time.perf_counter() - started:.1f} s")

    services.project_create(name="Bench photos", modality="dermatology")
    services.project_create(name="Bench counted", modality="dermatology")
    files = sorted(photos.iterdir())
    bare_decode(files[:20])  # warm the page cache and Pillow
    bare = min(bare_decode(files) for _ in range(2))
    print(f"bare decode and hash: {bare:.2f} s ({args.files / bare:.0f} files/s)")

    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    out = import_folder(photos, "Bench photos")
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    seconds = time.perf_counter() - started
    imported = Task.objects.filter(project__name="Bench photos").count()
    assert imported == args.files, out[-2000:]
    print(f"import_images: {seconds:.2f} s ({args.files / seconds:.0f} files/s), {imported} tasks")

    with CaptureQueriesContext(connection) as queries:
        out = import_folder(counted, "Bench counted")
    assert Task.objects.filter(project__name="Bench counted").count() == args.count, out[-2000:]
    per_file = len(queries.captured_queries) / args.count
    print(f"statements: {len(queries.captured_queries)} for {args.count} files ({per_file:.2f})")
    return {
        "files": args.files,
        "seconds": round(seconds, 3),
        "bare_decode_seconds": round(bare, 3),
        "ratio_to_decode": round(seconds / bare, 2),
        "queries_per_file": round(per_file, 2),
    }


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="medannot-bench-ingest-"))
    media = work / "media"
    media.mkdir()
    fresh_database(args.db)
    setup_django(args, media)
    flush_redis(args.redis)
    try:
        summary = run(args, work)
    finally:
        flush_redis(args.redis)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
