"""Patient details on slides never leave the store: label and macro pictures are never served,
exported or given to the model; slide properties are shown and exported from an allowlist.

Every image URL the project has is requested (found by walking the URL resolver, so a new one
is covered as soon as it lands), and every answer is searched for the label's colours and the
patient's name, birth year and barcode.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import openslide
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from PIL import Image as PILImage

from annotations import api_tokens, exportjobs, exports, services
from annotations.models import (
    ApiToken,
    Decision,
    ExportJob,
    Task,
    TaskState,
    Upload,
    UploadBatch,
)
from imaging import pixels, samples, series
from imaging.inspect import ALLOWED_PROPERTIES
from imaging.patches import PatchSettings, plan_patches, read_patches
from inference.tasks import export_task
from tests.factories import draft_fields

# The free text an Aperio scanner writes into the slide description.
APERIO_EXTRA = "|Filename = JaneDoe-1950|Date = 01/02/1950|Barcode = MRN-1950-7"
# Found in any answer, these would be a leak. The DICOM series names the patient in every
# instance (PatientName, PatientID, PatientBirthDate, BarcodeValue).
LEAKS = [b"JaneDoe", b"Jane", b"MRN-1950", b"BC-1950", b"19500101", b"01/02/1950"]
YEAR = re.compile(rb"(?<![0-9A-Za-z_\-])1950(?![0-9A-Za-z_\-])")
# Views that take no image: nothing to check, or only POST.
SKIPPED_NAMESPACES = {"admin"}


@dataclass
class Scene:
    tasks: list[Task]


def _draft(task: Task) -> None:
    """Draft `task` from two slide patches, as the worker would, and accept it."""
    services.task_transition(task_id=task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    plan = plan_patches(
        Path(settings.MEDIA_ROOT) / task.image.file, PatchSettings(patch_size=224, max_patches=2)
    )
    regions = [r.as_dict() for r in plan.regions]
    assert regions, "the sample slide gave no patches"
    services.draft_record(
        task_id=task.pk, attempt=claimed.attempt, fields=draft_fields(regions=regions)
    )


@pytest.fixture
def scene(people, tmp_path, django_capture_on_commit_callbacks) -> Scene:
    svs = samples.write_synthetic_slide(
        tmp_path / "case-1.svs",
        width=1536,
        height=1024,
        seed=11,
        flavour="aperio",
        description_extra=APERIO_EXTRA,
    )
    dicom = samples.write_dicom_series(
        tmp_path / "case-2", seed=12, label=True, overview=True, patient_name="JaneDoe^Anna"
    )
    files = [(svs.name, svs)] + [(p.name, p) for p in dicom]
    with django_capture_on_commit_callbacks(execute=False):
        results = services.images_ingest(project=people.project, files=files, enqueue=False)
    assert [r.status for r in results] == ["imported", "imported"], results
    tasks = [r.task for r in results]
    for task in tasks:
        _draft(task)
        task.refresh_from_db()
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            decision=Decision.ACCEPTED,
            draft_id=task.latest_draft().pk,
        )
        task.refresh_from_db()
    return Scene(tasks=tasks)


def _patterns(resolver: URLResolver | None = None, ns: str = "") -> list[tuple[str, URLPattern]]:
    """(name, pattern) of every named URL; a name in a namespace as reverse() takes it."""
    resolver = resolver or get_resolver("medannot.urls")
    found = []
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace not in SKIPPED_NAMESPACES:
                inner = f"{ns}{pattern.namespace}:" if pattern.namespace else ns
                found += _patterns(pattern, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            found.append((ns + pattern.name, pattern))
    return found


def _dzi_tiles(dzi: bytes) -> list[tuple[int, int, int]]:
    """(level, col, row) of every tile a Deep Zoom descriptor promises."""
    root = ET.fromstring(dzi)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    size = root.find(f"{ns}Size")
    width, height = int(size.get("Width")), int(size.get("Height"))
    tile = int(root.get("TileSize"))
    top = math.ceil(math.log2(max(width, height)))
    out = []
    for level in range(top + 1):
        scale = 2 ** (top - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        out += [
            (level, c, r) for c in range(math.ceil(w / tile)) for r in range(math.ceil(h / tile))
        ]
    return out


def _urls(client, name: str, pattern: URLPattern, task: Task) -> list[str]:
    """Every URL of `pattern` (named `name`) that shows something of `task`."""
    params = set(pattern.pattern.converters)
    draft = task.latest_draft()
    values = {
        "project_id": [task.project_id],
        "task_id": [task.pk],
        "draft_id": [draft.pk],
        "image_id": [task.image_id],
        "index": list(range(len(draft.regions))),
        # An export job of the task's project, written: its page and its file.
        "job_id": [_export_job(task.project).pk],
        # An upload batch of the task's project (its report) and an upload in it.
        **dict(zip(("batch_id", "upload_id"), _upload(task.project), strict=True)),
        # An API token (its revoke action is POST only).
        "token_id": [ApiToken.objects.values_list("pk", flat=True).first()],
        # An invitation link (its page, once the link is spent, says so and shows nothing).
        "uidb64": ["MQ"],
        "token": ["spent-token"],
        # A blind comparison (its close action is POST only: nothing shown).
        "comparison_id": [0],
        # The insights page's CSVs: a plot's and the study summary.
        "plot": ["readers", "summary"],
    }
    if not params:
        return [reverse(name)]
    if {"level", "col", "row"} <= params:
        # Deep Zoom tiles: the page hands OpenSeadragon a .dzi URL with a token for them
        detail = client.get(reverse("task-detail", args=[task.pk]))
        dzi_url = detail.context.get("dzi_url") if detail.context else None
        assert dzi_url, "the review page gives no .dzi URL for the tiles"
        query = dict(parse_qsl(urlsplit(dzi_url).query))
        dzi = client.get(dzi_url).content
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items())
        rest = params - {"level", "col", "row"}
        assert rest <= set(values), f"no values for {rest - set(values)} in {name}"
        return [
            reverse(
                pattern.name,
                kwargs={"level": lv, "col": c, "row": r, **{k: values[k][0] for k in rest}},
            )
            + suffix
            for lv, c, r in _dzi_tiles(dzi)
        ]
    unknown = params - set(values)
    assert not unknown, f"{name}: no test values for {unknown}; add them to test_phi"
    if "index" in params:
        return [
            reverse(
                pattern.name, kwargs={k: values[k][0] for k in params - {"index"}} | {"index": i}
            )
            for i in values["index"]
        ]
    return [reverse(name, kwargs={k: values[k][0] for k in params})]


def _export_job(project) -> ExportJob:
    """A finished export job of `project` (made and run once)."""
    job = ExportJob.objects.filter(project=project).first()
    if job is None:
        job = exportjobs.export_job_start(
            project=project, requested_by=None, options=exports.ExportOptions()
        )
        export_task(job.pk)
        job.refresh_from_db()
    return job


def _upload(project) -> tuple[list[int], list[int]]:
    """A finished upload batch of `project` by the superuser, and an upload in it."""
    upload = Upload.objects.filter(project=project).first()
    if upload is not None:
        return [upload.batch_id], [upload.pk]
    user = get_user_model().objects.filter(is_superuser=True).first()
    batch = UploadBatch.objects.create(project=project, user=user, finished_at=timezone.now())
    upload = Upload.objects.create(
        project=project,
        user=user,
        batch=batch,
        filename="photo.jpg",
        length=10,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    return [batch.pk], [upload.pk]


def _body(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


def _label_pixels(data: bytes) -> tuple[int, int]:
    """How many pixels of a picture are near LABEL_RGB and MACRO_RGB."""
    with PILImage.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    near = [
        int(np.count_nonzero(np.abs(arr - np.array(rgb)).max(axis=-1) < 60))
        for rgb in (samples.LABEL_RGB, samples.MACRO_RGB)
    ]
    return near[0], near[1]


def _leaks(data: bytes, *, text: bool) -> list[bytes]:
    found = [leak for leak in LEAKS if leak in data]
    if text and YEAR.search(data):
        found.append(b"1950")
    return found


def test_no_image_url_shows_the_label_or_the_patient(people, scene, client_for):
    client = client_for(people.superuser)
    # The REST API, with a token (a session does not open it); its root is a 404.
    token = api_tokens.token_create(user=people.superuser, name="phi").secret
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    checked: dict[str, int] = {}
    for name, pattern in _patterns():
        if name == "api:api-root":
            continue
        for task in scene.tasks:
            for url in _urls(client, name, pattern, task):
                response = (api if name.startswith("api:") else client).get(url)
                if response.status_code in (302, 405):
                    continue  # a POST-only action, or the login page
                assert response.status_code == 200, (url, response.status_code)
                data = _body(response)
                kind = response.get("Content-Type", "")
                if kind.startswith("image/"):
                    assert _label_pixels(data) == (0, 0), f"label or macro pixels in {url}"
                    assert _leaks(data, text=False) == [], url
                else:
                    text = html.unescape(data.decode("utf-8", "replace")).encode()
                    assert _leaks(text, text=True) == [], url
                checked[name] = checked.get(name, 0) + 1
    # the picture views were all reached (and the slide tiles, once they exist)
    assert {"task-preview", "draft-region", "task-detail"} <= set(checked)
    assert {"api:task_read", "api:task_list", "api:export_download"} <= set(checked)
    if "slide-tile" in {name for name, _ in _patterns()}:
        assert checked.get("slide-tile", 0) > 10 and "slide-dzi" in checked


def test_the_export_carries_only_allowlisted_properties(people, scene):
    lines = list(exports.jsonl_lines(people.project))
    assert len(lines) == 2
    blob = "".join(lines).encode()
    assert _leaks(blob, text=True) == []
    for prefix in (b"aperio.", b"openslide.", b"dicom.", b"PatientName", b"Barcode"):
        assert prefix not in blob
    for line in lines:
        for value in json.loads(line).values():
            if isinstance(value, dict) and "vendor" in value:  # a properties dict
                assert set(value) <= set(ALLOWED_PROPERTIES)
        assert set(json.loads(line)["image_properties"]) == set(ALLOWED_PROPERTIES)


def test_the_model_sees_no_label_or_macro(scene):
    for task in scene.tasks:
        path = Path(settings.MEDIA_ROOT) / task.image.file
        whole = pixels.load_for_model(path, task.image.info())
        buf = io.BytesIO()
        whole.save(buf, format="PNG")
        assert _label_pixels(buf.getvalue()) == (0, 0)
        plan = plan_patches(path, PatchSettings(patch_size=224, max_patches=4))
        for patch in read_patches(path, plan):
            buf = io.BytesIO()
            patch.save(buf, format="PNG")
            assert _label_pixels(buf.getvalue()) == (0, 0)


def test_a_dicom_label_and_overview_are_never_stored(scene):
    dicom = next(t.image for t in scene.tasks if t.image.format == "dicom")
    folder = (Path(settings.MEDIA_ROOT) / dicom.file).parent
    parts = sorted(series.dicom_header(p).part for p in folder.iterdir())
    assert parts == ["THUMBNAIL", "VOLUME", "VOLUME"]
    with openslide.OpenSlide(Path(settings.MEDIA_ROOT) / dicom.file) as slide:
        assert not {"label", "macro"} & set(slide.associated_images)


def test_no_row_stores_a_free_text_property(scene):
    for task in scene.tasks:
        image = task.image
        row = {field.name: getattr(image, field.attname) for field in image._meta.concrete_fields}
        assert _leaks(repr(row).encode(), text=True) == []
