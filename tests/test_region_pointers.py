"""Region pointers: rectangles and polygons a pathologist draws on the slide with a decision,
stored on the label as GeoJSON in level-0 pixels, shown again and exported."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotations import services
from annotations.models import AuditEvent, Label, TaskState
from annotations.regions import InvalidRegions
from tests.factories import draft_fields, make_drafted_task, make_image, make_task, record_draft

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


def feature(ring, note="missed finding here", kind="polygon") -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"note": note, "kind": kind},
    }


def box(x, y, w, h, note="missed finding here") -> dict:
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    return feature(ring, note, kind="rectangle")


@pytest.fixture
def slide_task(people):
    image = make_image(kind="slide", format="tiff", width=4000, height=3000, levels=3)
    return record_draft(make_task(people.project, image=image), text="Ductal carcinoma.")


def decide(client, task, regions, **extra):
    data = {"decision": "accepted", "draft_id": task.latest_draft().pk}
    data["regions"] = regions if isinstance(regions, str) else json.dumps(regions)
    return client.post(reverse("task-decide", args=[task.pk]), data | extra, **HTMX)


def test_it_stores_region_pointers_with_the_decision(people, client_for, slide_task):
    regions = [
        box(100, 200, 300, 150, note="  this is not tumour  "),
        feature([[10, 10], [500.5, 20], [250, 400], [10, 10]], note="missed finding here"),
    ]
    response = decide(client_for(people.pathologist), slide_task, regions)
    assert response.status_code == 200, response.content.decode()
    label = Label.objects.get(task=slide_task)
    assert len(label.regions) == 2
    assert label.regions[0]["properties"] == {"note": "this is not tumour", "kind": "rectangle"}
    assert label.regions[1]["geometry"]["coordinates"][0][1] == [500.5, 20.0]
    after = AuditEvent.objects.filter(action="label.record").latest("at").after
    assert after["regions"] == label.regions


def test_it_shows_the_pointers_again_when_the_task_is_reopened(people, client_for, slide_task):
    client = client_for(people.pathologist)
    decide(client, slide_task, [box(100, 200, 300, 150, note="this is not tumour")])
    body = client.get(reverse("task-detail", args=[slide_task.pk])).content.decode()
    assert '<script id="saved-regions" type="application/json">' in body
    saved = body.split('<script id="saved-regions" type="application/json">')[1].split("</script>")
    assert json.loads(saved[0]) == Label.objects.get(task=slide_task).regions
    assert "Region 1 (rectangle): this is not tumour" in body  # as text, for screen readers
    assert "No regions pointed out" in body  # the hidden "none yet" line is there for JS
    # The form carries them, so that the next decision keeps them.
    assert 'name="regions"' in body and "this is not tumour" in body.split('name="regions"')[1]


def test_a_script_in_a_note_is_escaped(people, client_for, slide_task):
    client = client_for(people.pathologist)
    note = "</script><script>alert(1)</script>"
    assert decide(client, slide_task, [box(1, 1, 10, 10, note=note)]).status_code == 200
    body = client.get(reverse("task-detail", args=[slide_task.pk])).content.decode()
    assert "<script>alert(1)" not in body
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in body  # the text list
    assert "\\u003C/script\\u003E" in body  # json_script's escaping


def test_they_are_exported_as_a_feature_collection(people, client_for, slide_task):
    decide(client_for(people.pathologist), slide_task, [box(100, 200, 300, 150)])
    export = client_for(people.admin).get(reverse("project-export", args=[people.project.pk]))
    line = json.loads(b"".join(export.streaming_content).decode().splitlines()[0])
    assert line["regions"] == {
        "type": "FeatureCollection",
        "features": [box(100.0, 200.0, 300.0, 150.0)],
    }
    assert line["draft_regions"] == []  # what the model was given: none for this test draft
    assert "not a medical device" in line["draft_notice"].lower()


def test_a_label_without_pointers_exports_an_empty_collection(people, client_for):
    task = make_drafted_task(people.project)
    assert decide(client_for(people.pathologist), task, "").status_code == 200
    export = client_for(people.admin).get(reverse("project-export", args=[people.project.pk]))
    line = json.loads(b"".join(export.streaming_content).decode().splitlines()[0])
    assert line["regions"] == {"type": "FeatureCollection", "features": []}


def test_a_new_decision_replaces_the_pointers(people, client_for, slide_task):
    client = client_for(people.pathologist)
    decide(client, slide_task, [box(1, 1, 10, 10), box(20, 20, 10, 10)])
    # label_revision: the second decision is made on the first one (tests/test_conflicts.py)
    decide(
        client,
        slide_task,
        [],
        decision="rejected",
        reason="Wrong organ.",
        category="other",
        label_revision=1,
    )
    assert Label.objects.get(task=slide_task).regions == []


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
            "[[[0, 0], [NaN, 1], [1, 1], [0, 0]]]}}]",
            "finite",
        ),
        ({"a": 1}, "must be a list"),
        (["x"], "not a GeoJSON Feature"),
        ([{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}}], "Polygon"),
        ([feature([[0, 0], [10, 0], [10, 10], [0, 10]])], "not closed"),
        ([feature([[0, 0], [10, 0], [0, 0]])], "4 to 1000 points"),
        ([feature([[0, 0]] + [[i % 50, i % 70] for i in range(1, 1001)] + [[0, 0]])], "points"),
        ([box(3900, 100, 200, 100)], "outside the image"),  # the image is 4000 wide
        ([box(-5, 100, 20, 100)], "outside the image"),
        ([feature([[0, 0], [10, 0], ["10", 10], [0, 0]])], "finite number"),
        ([feature([[0, 0], [10, 0], [True, 10], [0, 0]])], "finite number"),
        ([box(1, 1, 10, 10)] * 51, "At most 50"),
        ([box(1, 1, 10, 10, note="x" * 501)], "longer than 500"),
        ([feature([[0, 0], [10, 0], [10, 10], [0, 0]], kind="circle")], "rectangle or a polygon"),
    ],
)
def test_it_refuses_invalid_pointers_and_stores_nothing(
    people, client_for, slide_task, regions, message
):
    response = decide(client_for(people.pathologist), slide_task, regions)
    assert response.status_code == 422
    body = response.content.decode()
    assert "Region pointers:" in body and message in body, body
    assert not Label.objects.exists()
    slide_task.refresh_from_db()
    assert slide_task.state == TaskState.DRAFTED


def test_the_service_checks_the_bounds_itself(people, slide_task):
    with pytest.raises(InvalidRegions):
        services.label_record(
            task_id=slide_task.pk,
            reviewer=people.pathologist,
            decision="accepted",
            draft_id=slide_task.latest_draft().pk,
            regions=[box(0, 0, 5000, 10)],
        )
    assert not Label.objects.exists()


def test_without_javascript_a_decision_needs_no_pointers(people, client_for, slide_task):
    # A plain form post (no htmx, no regions field at all) still decides.
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[slide_task.pk]),
        {"decision": "accepted", "draft_id": slide_task.latest_draft().pk},
    )
    assert response.status_code == 302
    assert Label.objects.get(task=slide_task).regions == []


def test_the_page_hands_the_viewer_the_models_patches(people, client_for):
    image = make_image(kind="slide", format="tiff", width=4000, height=3000, levels=3)
    task = make_task(people.project, state=TaskState.QUEUED, image=image)
    claimed = services.task_claim(task_id=task.pk)
    region = dict(
        x=64, y=128, width=896, height=896, level=1, read_size=448, size=448, mpp=0.5, tissue=0.8
    )
    services.draft_record(
        task_id=task.pk, attempt=claimed.attempt, fields=draft_fields(regions=[region])
    )
    body = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content
    body = body.decode()
    script = body.split('<script id="model-regions" type="application/json">')[1]
    assert json.loads(script.split("</script>")[0]) == [region]
    assert 'id="viewer"' in body and 'data-width="4000"' in body and "<noscript><img" in body
    assert 'style="' not in body  # the strict CSP allows no style attributes
