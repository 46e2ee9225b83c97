"""Previews and slide-region thumbnails: rendered once, kept beside the media.

The picture work is `imaging`'s; this module knows where the files live and writes each
one through a private temporary file and a rename, so that concurrent requests for the
same picture never see, or write into, half a JPEG.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from PIL import Image as PILImage

from annotations import messages, tiles
from annotations.models import Draft, Image
from annotations.queues import DEFAULT_QUEUE, PREVIEW_TASK
from imaging import ImageRejected, patches, pixels

log = logging.getLogger(__name__)

REGION_THUMBNAIL = 320


def _media() -> Path:
    return Path(settings.MEDIA_ROOT)


def image_file_present(image: Image) -> bool:
    """Whether the stored file of `image` is still there (one stat: a lost disk shows up
    as a message on the review page, not as a broken viewer)."""
    return (_media() / image.file).exists()


def preview_file(image: Image) -> Path:
    """The preview of `image`, rendered on first use. Raises ImageRejected."""
    path = _media() / "previews" / image.sha256[:2] / f"{image.sha256}.jpg"
    if not path.exists():
        _write_jpeg(pixels.render_preview(_media() / image.file, image.info()), path)
    return path


def preview_make(*, image_id: int) -> bool:
    """Render the preview of an image and the first Deep Zoom levels of its viewer, ahead of
    the first page view (the worker's preview task). Idempotent: what exists is kept. False
    when the image is gone or unreadable (the page then says the preview is unavailable)."""
    image = Image.objects.filter(pk=image_id).first()
    if image is None:
        return False
    try:
        preview_file(image)
        tiles.warm(image)
    except ImageRejected as exc:
        log.warning("image %s: no preview: %s", image_id, exc)
        return False
    return True


def preview_send(image_id: int) -> bool:
    """Queue the preview task of an image. Never raises: without a broker, the first page
    view renders the preview."""
    return messages.send(PREVIEW_TASK, args=[image_id], queue=DEFAULT_QUEUE)


def previews_send(image_ids: Sequence[int]) -> int:
    """`preview_send` for several images over one broker connection; how many went (the
    rest, once the broker fails, render on their first page view)."""
    return messages.send_many(PREVIEW_TASK, args=[[pk] for pk in image_ids], queue=DEFAULT_QUEUE)


def region_file(draft: Draft, index: int) -> Path:
    """Thumbnail of slide patch `index` of `draft`, as the model saw it (scaled).

    Raises ImageRejected (unreadable slide) or ValueError (a plan that fits no slide).
    """
    path = _media() / "previews" / "regions" / f"{draft.pk}-{index}.jpg"
    if not path.exists():
        region = patches.Region(**draft.regions[index])
        plan = patches.PatchPlan([region], level=region.level, mpp=region.mpp, note="")
        (patch,) = patches.read_patches(_media() / draft.task.image.file, plan)
        patch.thumbnail((REGION_THUMBNAIL, REGION_THUMBNAIL))
        _write_jpeg(patch, path)
    return path


def _write_jpeg(picture: PILImage.Image, path: Path) -> None:
    # pixels and the sRGB profile only: a source's comment, EXIF, XMP or IPTC can name the patient
    data = pixels.encode_jpeg(picture, quality=85)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        tmp.write(data)
    Path(tmp.name).replace(path)
