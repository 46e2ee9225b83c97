"""The review page says what a picture is: unknown µm/px, and pictures shown enlarged."""

from __future__ import annotations

from django.urls import reverse

from annotations import services
from annotations.models import TaskState
from tests.factories import draft_fields, make_image, make_task


def _region(size: int, mpp: float | None) -> dict:
    return dict(
        x=0, y=0, width=size, height=size, level=0, read_size=size, size=size, mpp=mpp, tissue=0.5
    )


def _drafted(project, image, regions: list[dict]):
    task = make_task(project, state=TaskState.QUEUED, image=image)
    claimed = services.task_claim(task_id=task.pk)
    services.draft_record(
        task_id=task.pk, attempt=claimed.attempt, fields=draft_fields(regions=regions)
    )
    return task


def _page(people, client_for, task) -> str:
    response = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_it_says_a_slides_microns_per_pixel_are_unknown(people, client_for):
    image = make_image(kind="slide", format="tiff", width=40_000, height=30_000, levels=4)
    body = _page(people, client_for, _drafted(people.project, image, [_region(896, None)]))
    assert "microns per pixel unknown" in body
    assert "shown enlarged" not in body  # a big slide and full-size patches


def test_it_shows_known_microns_per_pixel(people, client_for):
    image = make_image(
        kind="slide", format="svs", width=40_000, height=30_000, levels=4, mpp_x=0.25, mpp_y=0.25
    )
    body = _page(people, client_for, _drafted(people.project, image, [_region(896, 1.0)]))
    assert "0.250 µm/px" in body and "microns per pixel unknown" not in body


def test_it_says_when_small_patches_and_a_small_slide_are_shown_enlarged(people, client_for):
    image = make_image(kind="slide", format="tiff", width=300, height=200, levels=3)
    task = _drafted(people.project, image, [_region(64, None), _region(300, None)])
    body = _page(people, client_for, task)
    assert "shown enlarged: the image is 300 × 200 pixels" in body
    assert body.count("(shown enlarged)") == 1  # the 64-px patch, not the 300-px one


def test_a_small_photo_is_shown_enlarged_without_a_microns_note(people, client_for):
    image = make_image(kind="photo", format="jpeg", width=640, height=480)
    body = _page(people, client_for, make_task(people.project, image=image))
    assert "shown enlarged: the image is 640 × 480 pixels" in body
    assert "microns per pixel unknown" not in body


def test_a_large_photo_is_not_shown_enlarged(people, client_for):
    image = make_image(kind="photo", format="jpeg", width=4000, height=900)
    body = _page(people, client_for, make_task(people.project, image=image))
    assert "shown enlarged" not in body
