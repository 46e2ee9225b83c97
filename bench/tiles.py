"""Deep Zoom tiles through the project's tile view, cold and warm, against a naive reference.

    python bench/tiles.py [--size 40960] [--step 2] [--windows 6] [--seed 0]

Writes a synthetic slide of --size × --size pixels (a JPEG-tiled generic TIFF pyramid, each
level --step times smaller, from a few pre-encoded textured tiles: seconds, not minutes),
then requests a sweep of tiles through `annotations.views.slide_tile` with a valid token
(RequestFactory: the view and its caches, no database):

- all tiles of every Deep Zoom level of at most 500 tiles, and
- --windows viewer-sized windows (8 × 6 tiles, as a screen pans) at each level above.

`cold`: a fresh slide-handle cache and an empty tile cache. `warm`: the same sweep again
(every tile from the disk cache). The reference, in the same run, serves the same tiles the
naive way: per request it opens the slide, builds a DeepZoomGenerator, reads the tile and
encodes the JPEG. `warm_client_tiles_per_s` is the warm sweep through Django's test Client
(every middleware, but still no database). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WINDOW = (8, 6)  # tiles of a 2032 × 1524 px viewport
FULL_LEVEL_TILES = 500


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40960, help="level-0 width and height")
    parser.add_argument("--step", type=int, default=2, choices=(2, 4), help="level downsample")
    parser.add_argument("--windows", type=int, default=6, help="windows per top level")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def write_fast_slide(path: Path, size: int, step: int, seed: int) -> Path:
    """A JPEG-tiled generic TIFF pyramid written from 16 pre-encoded 256 px tiles, cycled.

    The tiles are JPEG-encoded once with Pillow and handed to tifffile as bytes; tifffile
    only looks up its own JPEG encoder (from imagecodecs, not installed here), never calls it.
    """
    import tifffile
    import tifffile._imagecodecs as bundled
    from PIL import Image, ImageFilter

    if not hasattr(bundled, "jpeg_encode"):

        def never(*args, **kwargs):
            raise RuntimeError("the tiles are encoded already")

        bundled.jpeg_encode = never
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(16):
        # H&E-like: pink stroma, purple nuclei blobs
        base = np.empty((256, 256, 3), np.float32)
        base[:] = (232, 180, 205)
        blobs = rng.random((64, 64)) > 0.8
        mask = (
            np.asarray(
                Image.fromarray((blobs * 255).astype(np.uint8))
                .resize((256, 256), Image.Resampling.BICUBIC)
                .filter(ImageFilter.GaussianBlur(2)),
                np.float32,
            )[..., None]
            / 255
        )
        nuclei = np.array((95, 55, 150), np.float32)
        pixels = base * (1 - mask) + nuclei * mask + rng.normal(0, 6, base.shape)
        buf = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        encoded.append(buf.getvalue())

    def tiles(n: int):
        for i in range(n):
            yield encoded[(i * 7 + i // 13) % len(encoded)]

    mpp = 0.25
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        side, level = size, 0
        while True:
            n = (-(-side // 256)) ** 2
            res = 1e4 / (mpp * step**level)
            tif.write(
                tiles(n),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(256, 256),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                subfiletype=1 if level else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            if side <= 1024:
                break
            side, level = side // step, level + 1
    return path


def sweep(generator, windows: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    out = []
    for level in range(generator.level_count):
        cols, rows = generator.level_tiles[level]
        if cols * rows <= FULL_LEVEL_TILES:
            out += [(level, c, r) for r in range(rows) for c in range(cols)]
            continue
        for _ in range(windows):
            c0 = rng.randrange(max(1, cols - WINDOW[0]))
            r0 = rng.randrange(max(1, rows - WINDOW[1]))
            out += [
                (level, c, r)
                for r in range(r0, min(rows, r0 + WINDOW[1]))
                for c in range(c0, min(cols, c0 + WINDOW[0]))
            ]
    return out


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="medannot-bench-tiles-"))
    media = work / "media"
    (media / "images").mkdir(parents=True)
    os.environ["MEDIA_ROOT"] = str(media)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("DEBUG", "true")
    try:
        run(args, media)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, media: Path) -> None:
    import django

    django.setup()
    import openslide
    from django.conf import settings
    from django.test import Client, RequestFactory
    from django.urls import reverse
    from openslide.deepzoom import DeepZoomGenerator

    from annotations import tiles, views
    from imaging import deepzoom, pixels

    t0 = time.perf_counter()
    slide_path = write_fast_slide(media / "images" / "bench.tiff", args.size, args.step, args.seed)
    os.sync()  # a stored slide is on disk: no writeback of it competing with the sweeps
    with openslide.OpenSlide(slide_path) as slide:
        dims = slide.level_dimensions
        generator = DeepZoomGenerator(slide, deepzoom.TILE_SIZE, deepzoom.OVERLAP, True)
        wanted = sweep(generator, args.windows, args.seed)
        dz_levels = generator.level_count
    print(
        f"slide {args.size} × {args.size} px, {len(dims)} levels (step {args.step}), "
        f"{slide_path.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t0:.1f} s; "
        f"{dz_levels} Deep Zoom levels, sweep of {len(wanted)} tiles",
        flush=True,
    )

    image = types.SimpleNamespace(
        pk=1, file="images/bench.tiff", kind="slide", sha256="be" * 32
    )  # no database: the token says all the tile view needs
    token = tiles.mint_token(image, types.SimpleNamespace(pk=1))
    factory = RequestFactory()
    quality = settings.MEDANNOT_TILE_QUALITY

    def through_view(level: int, col: int, row: int) -> bytes:
        url = reverse("slide-tile", args=[1, level, col, row])
        response = views.slide_tile(factory.get(url, {"t": token}), 1, level, col, row)
        assert response.status_code == 200, (response.status_code, response.content[:200])
        return response.content

    def timed(serve) -> tuple[float, list[float]]:
        each = []
        start = time.perf_counter()
        for level, col, row in wanted:
            t = time.perf_counter()
            serve(level, col, row)
            each.append(time.perf_counter() - t)
        tiles.store().flush()  # the tiles written behind the answers count too
        return time.perf_counter() - start, each

    # cold: fresh handles, empty tile cache
    tiles.reset()
    shutil.rmtree(media / "tiles", ignore_errors=True)
    cold_s, cold_each = timed(through_view)
    warm_s, warm_each = timed(through_view)

    client = Client()

    def through_client(level: int, col: int, row: int) -> bytes:
        url = reverse("slide-tile", args=[1, level, col, row])
        response = client.get(url, {"t": token})
        assert response.status_code == 200, response.status_code
        return response.content

    client_s, _ = timed(through_client)

    def reference(level: int, col: int, row: int) -> bytes:
        with openslide.OpenSlide(slide_path) as slide:
            gen = DeepZoomGenerator(slide, deepzoom.TILE_SIZE, deepzoom.OVERLAP, True)
            return pixels.encode_jpeg(gen.get_tile(level, (col, row)), quality=quality)

    reference_s, _ = timed(reference)

    n = len(wanted)
    cold, warm, ref = n / cold_s, n / warm_s, n / reference_s
    p95 = statistics.quantiles(warm_each, n=20)[-1] * 1000
    cold_p95 = statistics.quantiles(cold_each, n=20)[-1] * 1000
    cached = sum(f.stat().st_size for f in (media / "tiles").rglob("*.jpeg"))
    print(f"reference (open + generator + tile + JPEG per request): {ref:.0f} tiles/s")
    print(f"cold (fresh handle cache, empty tile cache): {cold:.0f} tiles/s = {cold / ref:.1f}×")
    print(f"warm (tiles from the disk cache): {warm:.0f} tiles/s = {warm / ref:.1f}×")
    print(f"warm through the test Client (all middleware): {n / client_s:.0f} tiles/s")
    print(f"tile cache: {cached / 1e6:.1f} MB for {n} tiles; p95 warm {p95:.2f} ms")
    summary = {
        "tiles": n,
        "slide_px": args.size,
        "slide_levels": len(dims),
        "level_step": args.step,
        "deep_zoom_levels": dz_levels,
        "quality": quality,
        "cold_tiles_per_s": round(cold, 1),
        "warm_tiles_per_s": round(warm, 1),
        "warm_client_tiles_per_s": round(n / client_s, 1),
        "reference_tiles_per_s": round(ref, 1),
        "cold_speedup": round(cold / ref, 2),
        "warm_speedup": round(warm / ref, 2),
        "p95_ms": round(p95, 3),
        "cold_p95_ms": round(cold_p95, 3),
        "mean_tile_bytes": round(cached / n),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
