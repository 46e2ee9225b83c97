"""The slide viewer's Deep Zoom: the .dzi descriptor, tiles, tokens, caches and previews."""

from __future__ import annotations

import ctypes
import importlib.util
import io
import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import openslide
import pytest
import redis
from django.conf import settings
from django.urls import reverse
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from annotations import previews, services, tiles
from annotations.queues import PREVIEW_TASK
from imaging import deepzoom, samples
from inference.tasks import preview_task

ROOT = Path(__file__).resolve().parent.parent
DZ = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Each test starts with no open slides and no tile cache of an earlier test."""
    tiles.reset()
    yield
    tiles.reset()


def _ingest(project, path: Path, name: str | None = None):
    result = services.image_ingest(
        project=project, source=path, original_name=name or path.name, enqueue=False
    )
    assert result.status == "imported", result.message
    return result.task


@pytest.fixture
def slide_task(people, sample_files):
    return _ingest(people.project, sample_files["svs"])


def _token(dzi_url: str) -> str:
    return parse_qs(urlsplit(dzi_url).query)["t"][0]


def _tile_url(image_id: int, level: int, col: int, row: int, token: str | None) -> str:
    url = reverse("slide-tile", args=[image_id, level, col, row])
    return f"{url}?t={token}" if token is not None else url


def _generator(path: Path) -> tuple[DeepZoomGenerator, openslide.AbstractSlide]:
    slide = openslide.open_slide(path)
    return DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=True), slide


def _decode(response) -> Image.Image:
    body = response.content
    assert body.startswith(b"\xff\xd8")
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


# --------------------------------------------------------------------------- the descriptor


def test_the_dzi_describes_the_slide_for_openseadragon(people, client_for, slide_task):
    image = slide_task.image
    url = tiles.dzi_url(image, people.pathologist)
    assert url.startswith(f"/slides/{image.pk}.dzi?t=")
    response = client_for(people.pathologist).get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    assert root.tag == f"{DZ}Image"
    assert root.get("Format") == "jpeg"
    assert root.get("Overlap") == "1"
    assert root.get("TileSize") == "254"
    generator, slide = _generator(Path(settings.MEDIA_ROOT) / image.file)
    size = root.find(f"{DZ}Size")
    width, height = generator.level_dimensions[-1]  # limit-bounded level 0
    assert (int(size.get("Width")), int(size.get("Height"))) == (width, height)
    assert (width, height) == (image.width, image.height)  # no bounds in this slide
    slide.close()


def test_the_review_page_gives_the_viewer_its_dzi_url(people, client_for, slide_task):
    response = client_for(people.pathologist).get(reverse("task-detail", args=[slide_task.pk]))
    assert response.status_code == 200
    dzi_url = response.context["dzi_url"]
    assert dzi_url.startswith(f"/slides/{slide_task.image_id}.dzi?t=")
    assert client_for(people.pathologist).get(dzi_url).status_code == 200


def test_members_of_other_projects_get_404_on_the_dzi(people, client_for, slide_task):
    url = reverse("slide-dzi", args=[slide_task.image_id])
    for persona in (people.other_pathologist, people.other_admin, people.outsider):
        assert client_for(persona).get(url).status_code == 404
    anonymous = client_for(None).get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    assert client_for(people.superuser).get(url).status_code == 200


def test_an_image_in_two_projects_is_visible_to_members_of_either(people, client_for, sample_files):
    task = _ingest(people.project, sample_files["svs"])
    _ingest(people.other_project, sample_files["svs"])
    url = reverse("slide-dzi", args=[task.image_id])
    assert client_for(people.other_pathologist).get(url).status_code == 200


# --------------------------------------------------------------------------- tiles


def test_every_level_has_tiles_that_decode(people, client_for, slide_task):
    image = slide_task.image
    token = _token(tiles.dzi_url(image, people.pathologist))
    generator, slide = _generator(Path(settings.MEDIA_ROOT) / image.file)
    client = client_for(people.pathologist)
    for level in range(generator.level_count):
        cols, rows = generator.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1)}:
            response = client.get(_tile_url(image.pk, level, col, row, token))
            assert response.status_code == 200, (level, col, row, response.content[:200])
            assert response["Content-Type"] == "image/jpeg"
            tile = _decode(response)
            # as openslide's own generator makes it (a hair off its nominal size at 2 × 1 px)
            assert tile.size == generator.get_tile(level, (col, row)).size
            assert max(tile.size) <= 256
            # pixels and the sRGB profile only: no comment, EXIF or XMP
            assert set(tile.info) <= {"jfif", "jfif_version", "jfif_unit", "jfif_density",
                                      "icc_profile", "dpi"}  # fmt: skip
    slide.close()


def test_a_bad_level_column_or_row_is_404(people, client_for, slide_task):
    image = slide_task.image
    token = _token(tiles.dzi_url(image, people.pathologist))
    generator, slide = _generator(Path(settings.MEDIA_ROOT) / image.file)
    top = generator.level_count - 1
    cols, rows = generator.level_tiles[top]
    slide.close()
    client = client_for(people.pathologist)
    for level, col, row in [(top + 1, 0, 0), (top, cols, 0), (top, 0, rows), (99, 99, 99)]:
        response = client.get(_tile_url(image.pk, level, col, row, token))
        assert response.status_code == 404, (level, col, row)


def test_a_tile_needs_a_valid_token(people, client_for, slide_task):
    image = slide_task.image
    client = client_for(people.pathologist)  # logged in: the session is no substitute
    token = _token(tiles.dzi_url(image, people.pathologist))
    assert client.get(_tile_url(image.pk, 0, 0, 0, None)).status_code == 403
    assert client.get(_tile_url(image.pk, 0, 0, 0, "")).status_code == 403
    assert client.get(_tile_url(image.pk, 0, 0, 0, "not-a-token")).status_code == 403
    payload, stamp, signature = token.rsplit(":", 2)
    forged = f"{payload}:{stamp}:{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert client.get(_tile_url(image.pk, 0, 0, 0, forged)).status_code == 403
    assert client.get(_tile_url(image.pk, 0, 0, 0, token)).status_code == 200


def test_a_token_for_one_image_opens_no_other(people, client_for, sample_files, slide_task):
    theirs = _ingest(people.other_project, sample_files["photo"])
    token = _token(tiles.dzi_url(theirs.image, people.other_pathologist))
    client = client_for(people.other_pathologist)
    assert client.get(_tile_url(theirs.image_id, 0, 0, 0, token)).status_code == 200
    # the same token on the URL of an image of another project
    assert client.get(_tile_url(slide_task.image_id, 0, 0, 0, token)).status_code == 404


def test_an_expired_token_is_refused(people, client_for, slide_task, monkeypatch):
    image = slide_task.image
    token = _token(tiles.dzi_url(image, people.pathologist))
    client = client_for(people.pathologist)
    assert client.get(_tile_url(image.pk, 0, 0, 0, token)).status_code == 200
    real = time.time
    later = real() + settings.MEDANNOT_TILE_TOKEN_SECONDS + 60
    monkeypatch.setattr(time, "time", lambda: later)
    response = client.get(_tile_url(image.pk, 0, 0, 0, token))
    assert response.status_code == 403
    assert b"expired" in response.content


def test_a_token_lives_as_long_as_the_setting_says(people, slide_task, settings, monkeypatch):
    settings.MEDANNOT_TILE_TOKEN_SECONDS = 600
    token = tiles.mint_token(slide_task.image, people.pathologist)
    assert tiles.grant_for(token, slide_task.image_id).image_id == slide_task.image_id
    later = time.time() + 601
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(tiles.TokenRefused, match="expired"):
        tiles.grant_for(token, slide_task.image_id)  # once verified, still checked for age


def test_tiles_carry_an_etag_and_a_long_private_cache_life(people, client_for, slide_task):
    image = slide_task.image
    url = _tile_url(image.pk, 9, 0, 0, _token(tiles.dzi_url(image, people.pathologist)))
    client = client_for(people.pathologist)
    first = client.get(url)
    assert first.status_code == 200
    assert first["Cache-Control"] == "private, max-age=86400"
    etag = first["ETag"]
    assert etag.startswith('"') and image.sha256[:24] in etag
    again = client.get(url, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    other = client.get(url, headers={"if-none-match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content


def test_the_tile_view_never_touches_the_database(
    people, client_for, slide_task, django_assert_num_queries
):
    image = slide_task.image
    token = _token(tiles.dzi_url(image, people.pathologist))
    client = client_for(people.pathologist)  # a session cookie: not even it is looked up
    with django_assert_num_queries(0):
        cold = client.get(_tile_url(image.pk, 10, 1, 1, token))
        warm = client.get(_tile_url(image.pk, 10, 1, 1, token))
        refused = client.get(_tile_url(image.pk, 10, 1, 1, None))
        missing = client.get(_tile_url(image.pk, 99, 0, 0, token))
    assert (cold.status_code, warm.status_code) == (200, 200)
    assert cold.content == warm.content
    assert (refused.status_code, missing.status_code) == (403, 404)


def test_a_photo_is_served_the_same_way(people, client_for, tmp_path):
    # a phone photo stored sideways (EXIF orientation 6): the viewer shows it upright
    path = samples.write_derm_photo(tmp_path / "lesion-big.jpg", size=(3000, 2000), orientation=6)
    task = _ingest(people.project, path)
    image = task.image
    assert (image.width, image.height) == (2000, 3000)
    client = client_for(people.pathologist)
    dzi_url = tiles.dzi_url(image, people.pathologist)
    response = client.get(dzi_url)
    assert response.status_code == 200
    size = ET.fromstring(response.content).find(f"{DZ}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (2000, 3000)
    token = _token(dzi_url)
    top = 12  # 2^12 = 4096 ≥ 3000: the full-resolution level
    for level, col, row in [(0, 0, 0), (8, 0, 0), (top, 0, 0), (top, 7, 11)]:
        response = client.get(_tile_url(image.pk, level, col, row, token))
        assert response.status_code == 200, (level, col, row)
        assert max(_decode(response).size) <= 256
    assert client.get(_tile_url(image.pk, top, 8, 0, token)).status_code == 404
    assert client.get(_tile_url(image.pk, top + 1, 0, 0, token)).status_code == 404


def test_a_photo_tile_matches_the_upright_preview(people, client_for, tmp_path):
    path = samples.write_derm_photo(tmp_path / "p.jpg", size=(600, 400), orientation=6)
    image = _ingest(people.project, path).image
    token = _token(tiles.dzi_url(image, people.pathologist))
    # level 8 is 100 × 150 px: one tile, the whole photo, upright
    tile = _decode(client_for(people.pathologist).get(_tile_url(image.pk, 8, 0, 0, token)))
    assert tile.size == (100, 150)
    preview = Image.open(previews.preview_file(image)).convert("RGB").resize((100, 150))
    diff = np.abs(np.asarray(tile, np.int16) - np.asarray(preview, np.int16)).mean()
    assert diff < 12


def test_a_lost_or_damaged_slide_answers_clearly(people, client_for, slide_task, tmp_path):
    image = slide_task.image
    stored = Path(settings.MEDIA_ROOT) / image.file
    client = client_for(people.pathologist)
    dzi_url = tiles.dzi_url(image, people.pathologist)
    token = _token(dzi_url)
    assert client.get(dzi_url).status_code == 200  # open and cached first

    stored.unlink()
    response = client.get(dzi_url)
    assert response.status_code == 422
    assert response.content.decode() == "slide unreadable: the stored file is missing"
    response = client.get(_tile_url(image.pk, 11, 0, 0, token))
    assert response.status_code in (404, 422)

    samples.write_corrupt_slide(tmp_path / "bad.svs")
    stored.write_bytes((tmp_path / "bad.svs").read_bytes())
    tiles.reset()
    response = client.get(dzi_url)
    assert response.status_code == 422
    assert response.content.decode().startswith("slide unreadable: ")
    response = client.get(_tile_url(image.pk, 10, 0, 0, token))  # a level of both files
    assert response.status_code == 422
    assert response.content.decode().startswith("slide unreadable: ")


# --------------------------------------------------------------------------- the caches


def _slide(tmp_path: Path, name: str, seed: int) -> Path:
    return samples.write_synthetic_slide(tmp_path / name, width=512, height=384, seed=seed)


def test_the_handle_cache_is_bounded_and_closes_what_it_evicts(tmp_path):
    handles = deepzoom.SlideHandles(max_handles=2, cache_bytes=8 * 1024**2)
    a, b, c = (_slide(tmp_path, f"{n}.tiff", i) for i, n in enumerate("abc"))
    with handles.use(a, "slide") as first:
        pass
    with handles.use(b, "slide"):
        pass
    assert len(handles) == 2 and not first.closed
    with handles.use(c, "slide"):
        pass
    assert len(handles) == 2
    assert a not in handles and first.closed
    with pytest.raises(ctypes.ArgumentError, match="closed slide"):
        first.slide.level_count  # noqa: B018  (a closed handle)
    with handles.use(b, "slide") as again:
        assert not again.closed  # reused, not reopened
    handles.close_all()
    assert len(handles) == 0 and again.closed


def test_a_handle_in_use_is_closed_only_when_its_request_is_done(tmp_path):
    handles = deepzoom.SlideHandles(max_handles=1)
    a, b = _slide(tmp_path, "a.tiff", 1), _slide(tmp_path, "b.tiff", 2)
    with handles.use(a, "slide") as busy:
        with handles.use(b, "slide"):
            assert a not in handles and not busy.closed
            deepzoom.render_tile(busy, 9, 0, 0, quality=80)  # still readable
    assert busy.closed


def test_a_read_error_drops_the_handle(tmp_path):
    handles = deepzoom.SlideHandles()
    bad = samples.write_corrupt_slide(tmp_path / "bad.svs")
    with pytest.raises(deepzoom.SlideUnreadable):
        with handles.use(bad, "slide") as opened:
            deepzoom.render_tile(opened, opened.generator.level_count - 1, 0, 0, quality=80)
    assert bad not in handles and opened.closed


def test_the_tile_cache_stays_under_its_limit(tmp_path):
    store = deepzoom.TileStore(tmp_path / "tiles", max_bytes=20_000, scan_every=4)
    now = time.time()
    for i in range(60):
        key = deepzoom.TileStore.key("ab12", 80, 3, i, 0)
        store.write(key, bytes(1000))
        os.utime(tmp_path / "tiles" / key, (now - 1000 + i, now - 1000 + i))
        assert store.total_bytes is None or store.total_bytes <= 21_000
    store.sweep()
    files = sorted((tmp_path / "tiles").rglob("*.jpeg"))
    assert sum(f.stat().st_size for f in files) <= 20_000
    kept = {int(f.name.split("_")[0]) for f in files}
    assert 59 in kept and 0 not in kept  # the oldest went first
    assert not list((tmp_path / "tiles").rglob("*.part"))


def test_served_tiles_land_in_the_tile_cache(people, client_for, slide_task, settings):
    image = slide_task.image
    token = _token(tiles.dzi_url(image, people.pathologist))
    client_for(people.pathologist).get(_tile_url(image.pk, 10, 0, 0, token))
    tiles.store().flush()
    q = settings.MEDANNOT_TILE_QUALITY
    cached = Path(settings.MEDIA_ROOT) / "tiles" / image.sha256[:24] / str(q) / "10" / "0_0.jpeg"
    assert cached.read_bytes().startswith(b"\xff\xd8")


# --------------------------------------------------------------------------- the TIFF fast path


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tiles", ROOT / "bench" / "tiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["slide", "svs", "jpeg-tiff"])
def test_the_fast_path_gives_openslides_pixels(kind, sample_files, tmp_path):
    path = (
        _bench().write_fast_slide(tmp_path / "j.tiff", 2048, 2, 0)
        if kind == "jpeg-tiff"
        else sample_files[kind]
    )
    handles = deepzoom.SlideHandles()
    with handles.use(path, "slide") as opened:
        assert opened.fast is not None
        generator = opened.generator
        for level in range(generator.level_count):
            cols, rows = generator.level_tiles[level]
            for address in {(0, 0), (cols // 2, rows // 2), (cols - 1, rows - 1)}:
                ours = opened.fast.tile(generator, level, address)
                theirs = generator.get_tile(level, address)
                assert ours is not None and ours.size == theirs.size
                diff = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16))
                assert diff.mean() <= 1, (kind, level, address)
    handles.close_all()


def test_the_fast_path_steps_aside_where_it_disagrees_with_openslide(tmp_path):
    # JPEG tiles stored as RGB without the colour transform: read differently by OpenSlide
    import tifffile
    import tifffile._imagecodecs as bundled

    if not hasattr(bundled, "jpeg_encode"):
        bundled.jpeg_encode = lambda *a, **k: b""  # tifffile looks it up, never calls it
    buf = io.BytesIO()
    pixels = np.zeros((256, 256, 3), np.uint8)
    pixels[...] = (200, 120, 60)
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, keep_rgb=True)
    path = tmp_path / "rgb-jpeg.tiff"
    with tifffile.TiffWriter(path) as tif:
        for level, side in enumerate((1024, 512)):
            tif.write(
                (buf.getvalue() for _ in range((side // 256) ** 2)),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    handles = deepzoom.SlideHandles()
    with handles.use(path, "slide") as opened:
        assert opened.fast is None
        generator = opened.generator
        top = generator.level_count - 1
        tile = Image.open(io.BytesIO(deepzoom.render_tile(opened, top, 1, 1, quality=80)))
        expected = generator.get_tile(top, (1, 1))
        assert tile.size == expected.size  # what OpenSlide reads, whatever that is
    handles.close_all()


# --------------------------------------------------------------------------- previews


def test_the_preview_is_made_by_the_worker_before_any_page_view(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        task = _ingest(people.project, sample_files["slide"])
    image = task.image
    messages = [json.loads(m) for m in broker.lrange("celery", 0, -1)]
    broker.delete("celery")
    sent = [m["headers"]["task"] for m in messages]
    assert sent == [PREVIEW_TASK]
    assert messages[0]["headers"]["argsrepr"] == f"[{image.pk}]"

    path = Path(settings.MEDIA_ROOT) / "previews" / image.sha256[:2] / f"{image.sha256}.jpg"
    assert not path.exists()
    preview_task(image.pk)  # what the worker on the `celery` queue runs
    assert path.read_bytes().startswith(b"\xff\xd8")
    # and the first viewer levels are rendered too
    first_tiles = list((Path(settings.MEDIA_ROOT) / "tiles" / image.sha256[:24]).rglob("*.jpeg"))
    assert len(first_tiles) >= 11
    mtime = path.stat().st_mtime_ns
    response = client_for(people.pathologist).get(reverse("task-preview", args=[task.pk]))
    assert response.status_code == 200
    assert path.stat().st_mtime_ns == mtime  # served, not rendered again
    preview_task(image.pk)  # a rerun changes nothing
    assert path.stat().st_mtime_ns == mtime


def test_a_duplicate_upload_sends_no_second_preview(
    people, sample_files, django_capture_on_commit_callbacks
):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with django_capture_on_commit_callbacks(execute=True):
        _ingest(people.project, sample_files["photo"])
    broker.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        _ingest(people.other_project, sample_files["photo"])  # the same bytes: the same image
    assert broker.llen("celery") == 0


def test_the_preview_task_survives_an_unreadable_image(people, sample_files):
    task = _ingest(people.project, sample_files["photo2"])
    (Path(settings.MEDIA_ROOT) / task.image.file).unlink()
    assert previews.preview_make(image_id=task.image_id) is False
    assert previews.preview_make(image_id=10**9) is False
    preview_task(task.image_id)  # logs, never raises


# --------------------------------------------------------------------------- every format


@pytest.fixture
def format_task(request, people, sample_files, tmp_path):
    """A task of each kind the viewer serves: generic TIFF, Aperio SVS, a DICOM series."""
    if request.param == "dicom":
        paths = samples.write_dicom_series(tmp_path / "series", seed=7, label=True)
        (result,) = services.images_ingest(
            project=people.project, files=[(p.name, p) for p in paths], enqueue=False
        )
        assert result.status == "imported", result.message
        return result.task
    return _ingest(people.project, sample_files[request.param])


@pytest.mark.parametrize("format_task", ["slide", "svs", "dicom"], indirect=True)
def test_each_format_has_its_levels_and_tiles_at_every_level(people, client_for, format_task):
    image = format_task.image
    client = client_for(people.pathologist)
    dzi_url = tiles.dzi_url(image, people.pathologist)
    root = ET.fromstring(client.get(dzi_url).content)
    generator, slide = _generator(Path(settings.MEDIA_ROOT) / image.file)
    size = root.find(f"{DZ}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == generator.level_dimensions[-1]
    assert image.levels == slide.level_count >= 2
    assert [tuple(d) for d in image.level_dimensions] == list(slide.level_dimensions)
    token = _token(dzi_url)
    for level in range(generator.level_count):
        cols, rows = generator.level_tiles[level]
        response = client.get(_tile_url(image.pk, level, cols - 1, rows - 1, token))
        assert response.status_code == 200, (level, response.content[:200])
        assert _decode(response).size == generator.get_tile(level, (cols - 1, rows - 1)).size
        assert client.get(_tile_url(image.pk, level, cols, 0, token)).status_code == 404
    assert client.get(_tile_url(image.pk, generator.level_count, 0, 0, token)).status_code == 404
    other = client_for(people.other_pathologist)
    assert other.get(reverse("slide-dzi", args=[image.pk])).status_code == 404
    slide.close()


def test_the_review_page_says_when_the_stored_file_is_lost(people, client_for, slide_task):
    (Path(settings.MEDIA_ROOT) / slide_task.image.file).unlink()
    response = client_for(people.pathologist).get(reverse("task-detail", args=[slide_task.pk]))
    assert response.status_code == 200
    assert "The stored file of this image cannot be read" in response.content.decode()


def test_the_review_page_shows_allowlisted_slide_properties(people, client_for, slide_task):
    body = client_for(people.pathologist).get(reverse("task-detail", args=[slide_task.pk]))
    assert "× objective" in body.content.decode() and "aperio" in body.content.decode()
