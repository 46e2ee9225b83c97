"""The task list (/projects/ID/tasks/): search, filters, sorting, keyset pages, access."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from annotations import services, tasklist
from annotations.models import (
    NO_DECISION,
    Draft,
    Image,
    Label,
    Project,
    PromptTemplate,
    Role,
    Task,
    TaskState,
)
from annotations.services import membership_set
from tests.factories import draft_fields, make_drafted_task, make_image, make_task

pytestmark = pytest.mark.django_db

ROW = re.compile(r'<tr id="task-(\d+)">')
NEXT = re.compile(r'<a rel="next" href="\?([^"]+)"')
PREVIOUS = re.compile(r'<a rel="prev" href="\?([^"]+)"')


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [int(pk) for pk in ROW.findall(response.content.decode())]


def add_task(
    project: Project,
    name: str,
    *,
    state: str = TaskState.DRAFTED,
    metadata: dict | None = None,
    readings: tuple = (),
    prompt: PromptTemplate | None = None,
    truncated: bool = False,
    review_state: str = "open",
    outcome: str = "",
) -> Task:
    """A task with a draft (unless new) and readings: (reviewer, decision, category, fast)."""
    task = Task.objects.create(
        project=project,
        image=make_image(original_name=name),
        state=state,
        metadata=metadata or {},
        review_state=review_state,
        outcome=outcome,
    )
    if state == TaskState.NEW:
        return task
    draft = Draft.objects.create(
        task=task, attempt=1, prompt_template=prompt, truncated=truncated, **draft_fields()
    )
    for reviewer, decision, category, fast in readings:
        Label.objects.create(
            task=task,
            draft=draft,
            reviewer=reviewer,
            decision=decision,
            text="" if decision == "rejected" else "Kept text.",
            reason="Wrong." if decision == "rejected" else "",
            category=category,
            fast_accept=fast,
        )
    tasklist.columns_rebuild([project.pk])  # rows made directly, as a repair would count them
    task.refresh_from_db()
    return task


@pytest.fixture
def scene(people):
    """Five tasks of `project` with readings by the admin and the pathologist."""
    p, admin, paul = people.project, people.project_admin, people.pathologist
    v2 = PromptTemplate.objects.create(project=p, version=2, instruction="Describe {organ}.")
    s = type("Scene", (), {})()
    s.people = people
    s.breast = add_task(
        p,
        "breast-001.svs",
        metadata={"organ": "breast", "site": "left"},
        readings=[(paul, "accepted", "", True)],
        review_state="final",
        outcome="accepted",
    )
    s.colon = add_task(
        p,
        "colon-002.svs",
        metadata={"organ": "colon"},
        readings=[(admin, "rejected", "missed finding", False)],
        prompt=v2,
        review_state="final",
        outcome="rejected",
    )
    s.lung = add_task(
        p,
        "lung-003.tiff",
        metadata={"organ": "lung", "note": "Breast metastasis?"},
        readings=[
            (admin, "edited", "wording only", False),
            (paul, "rejected", "missed finding", False),
        ],
        prompt=v2,
        truncated=True,
        review_state="disagreement",
    )
    s.new = add_task(p, "skin-004.jpg", state=TaskState.NEW)
    s.failed = add_task(p, "skin-005.jpg", state=TaskState.FAILED)
    Task.objects.filter(pk=s.failed.pk).update(error="Could not read the slide.")
    s.other = add_task(people.other_project, "breast-999.svs", metadata={"organ": "breast"})
    return s


def listing(client, project, **params):
    url = reverse("project-tasks", args=[project.pk])
    return client.get(url + "?" + urlencode(params, doseq=True))


# Search ---------------------------------------------------------------------------------


def test_it_searches_file_names_case_insensitively(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, q="COLON")) == [scene.colon.pk]


def test_a_word_also_matches_any_manifest_value(scene, client_for):
    client = client_for(scene.people.project_admin)
    found = ids(listing(client, scene.people.project, q="breast"))
    assert found == [scene.breast.pk, scene.lung.pk]  # a file name, and a manifest note


def test_field_colon_value_matches_that_manifest_field_only(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, q="organ:breast")) == [scene.breast.pk]
    assert ids(listing(client, scene.people.project, q="site:breast")) == []


def test_every_term_must_match(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, q="breast site:left")) == [scene.breast.pk]


def test_like_wildcards_in_the_search_are_plain_characters(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, q="%")) == []
    assert ids(listing(client, scene.people.project, q="_")) == []


def test_it_never_shows_another_projects_tasks(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert scene.other.pk not in ids(listing(client, scene.people.project, q="breast"))


# Filters --------------------------------------------------------------------------------


def test_it_filters_by_drafting_state(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, state="new")) == [scene.new.pk]
    assert ids(listing(client, scene.people.project, state="failed")) == [scene.failed.pk]


def test_it_filters_by_review_outcome(scene, client_for):
    client = client_for(scene.people.project_admin)
    project = scene.people.project
    assert ids(listing(client, project, review="rejected")) == [scene.colon.pk]
    assert ids(listing(client, project, review="disagreement")) == [scene.lung.pk]
    assert ids(listing(client, project, review="to_read")) == []


def test_it_filters_by_reviewer(scene, client_for):
    client = client_for(scene.people.project_admin)
    found = ids(listing(client, scene.people.project, reviewer="paul"))
    assert found == [scene.breast.pk, scene.lung.pk]


def test_it_filters_by_a_readings_category(scene, client_for):
    client = client_for(scene.people.project_admin)
    found = ids(listing(client, scene.people.project, category="missed finding"))
    assert found == [scene.colon.pk, scene.lung.pk]


def test_category_and_reviewer_must_meet_in_one_reading(scene, client_for):
    client = client_for(scene.people.project_admin)
    found = ids(listing(client, scene.people.project, category="wording only", reviewer="paul"))
    assert found == []  # paul read the lung task, but his reading is not "wording only"


def test_it_filters_by_the_newest_drafts_prompt_version(scene, client_for):
    client = client_for(scene.people.project_admin)
    assert ids(listing(client, scene.people.project, prompt="2")) == [scene.colon.pk, scene.lung.pk]
    found = ids(listing(client, scene.people.project, prompt="0"))
    assert found == [scene.breast.pk, scene.failed.pk]  # the default prompt


def test_it_filters_by_flags(scene, client_for):
    client = client_for(scene.people.project_admin)
    project = scene.people.project
    assert ids(listing(client, project, flag="fast_accept")) == [scene.breast.pk]
    assert ids(listing(client, project, flag="truncated")) == [scene.lung.pk]
    assert ids(listing(client, project, flag="disagreement")) == [scene.lung.pk]
    assert ids(listing(client, project, flag=["fast_accept", "truncated"])) == []


def test_it_filters_by_the_date_of_a_reading_or_of_the_task(scene, client_for):
    client = client_for(scene.people.project_admin)
    project = scene.people.project
    long_ago = timezone.now() - dt.timedelta(days=400)
    Label.objects.filter(task=scene.colon).update(updated_at=long_ago)
    Task.objects.filter(pk=scene.new.pk).update(created_at=long_ago)
    day = timezone.localdate(long_ago).isoformat()
    assert ids(listing(client, project, **{"from": day, "to": day})) == [scene.colon.pk]
    assert ids(listing(client, project, date_of="task", to=day)) == [scene.new.pk]
    later = ids(listing(client, project, date_of="task", **{"from": timezone.localdate()}))
    assert scene.new.pk not in later and scene.colon.pk in later


def test_unknown_values_are_dropped_not_errors(scene, client_for):
    client = client_for(scene.people.project_admin)
    everything = ids(listing(client, scene.people.project))
    odd = {"state": "<b>", "review": "x", "sort": "secret", "prompt": "-1", "from": "2024-13-99"}
    assert ids(listing(client, scene.people.project, **odd, after="!!!")) == everything
    assert len(everything) == 5


# Sorting --------------------------------------------------------------------------------

SORT_KEYS = {
    "id": lambda t: t.pk,
    "name": lambda t: t.image.original_name,
    "state": lambda t: t.state,
    "outcome": lambda t: t.outcome,
    "readings": lambda t: t.labels.count(),
    "decided": lambda t: max((la.updated_at for la in t.labels.all()), default=NO_DECISION),
    "prompt": lambda t: (
        -1
        if not t.drafts.exists()
        else (t.latest_draft().prompt_template.version if t.latest_draft().prompt_template else 0)
    ),
}


@pytest.mark.parametrize("column", list(SORT_KEYS))
@pytest.mark.parametrize("desc", [False, True])
def test_it_sorts_by_each_column_both_ways_ties_by_id(scene, client_for, column, desc):
    client = client_for(scene.people.project_admin)
    tasks = list(scene.people.project.tasks.select_related("image"))
    key = SORT_KEYS[column]
    expected = sorted(tasks, key=lambda t: (key(t), t.pk), reverse=desc)
    params = {"sort": column, "dir": "desc" if desc else "asc"}
    assert ids(listing(client, scene.people.project, **params)) == [t.pk for t in expected]


def test_a_column_header_turns_the_order_round(scene, client_for):
    client = client_for(scene.people.project_admin)
    page = listing(client, scene.people.project, sort="name").content.decode()
    assert 'aria-sort="ascending"><a href="?sort=name&amp;dir=desc"' in page


# Keyset pages ---------------------------------------------------------------------------


def walk(client, url: str, *, link=NEXT) -> list[list[int]]:
    """Follow `link` from `url` to the end, each page's ids."""
    pages = []
    while url:
        response = client.get(url)
        pages.append(ids(response))
        found = link.search(response.content.decode())
        url = urlsplit(url).path + "?" + found.group(1).replace("&amp;", "&") if found else ""
        assert len(pages) < 1000
    return pages


@pytest.fixture
def many(people):
    """23 tasks with many ties: three file names, readings 0 to 2."""
    p = people.project
    tasks = []
    for i in range(23):
        readers = [people.project_admin, people.pathologist][: i % 3]
        tasks.append(
            add_task(
                p,
                f"slide-{i % 3}.svs",
                readings=[(r, "accepted", "", False) for r in readers],
            )
        )
    return tasks


@pytest.mark.parametrize("column", ["id", "name", "readings", "decided", "outcome", "prompt"])
@pytest.mark.parametrize("desc", [False, True])
def test_pages_cover_every_task_once_in_order(many, people, client_for, column, desc, settings):
    client = client_for(people.project_admin)
    url = reverse("project-tasks", args=[people.project.pk])
    query = f"?sort={column}&dir={'desc' if desc else 'asc'}"
    whole = ids(client.get(url + query))
    tasklist_limit = tasklist.PER_PAGE
    try:
        tasklist.PER_PAGE = 5
        pages = walk(client, url + query)
    finally:
        tasklist.PER_PAGE = tasklist_limit
    flat = [pk for page in pages for pk in page]
    assert flat == whole and len(set(flat)) == 23
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]


def test_previous_goes_back_over_the_same_pages(many, people, client_for, monkeypatch):
    monkeypatch.setattr(tasklist, "PER_PAGE", 5)
    client = client_for(people.project_admin)
    url = reverse("project-tasks", args=[people.project.pk])
    forward = walk(client, url + "?sort=name&dir=desc")
    last = client.get(url + "?sort=name&dir=desc")
    for _ in range(len(forward) - 1):
        found = NEXT.search(last.content.decode()).group(1).replace("&amp;", "&")
        last = client.get(url + "?" + found)
    back = walk(client, url + "?" + found, link=PREVIOUS)
    assert back == forward[::-1]


def test_the_cursor_keeps_the_filters_in_the_url(many, people, client_for, monkeypatch):
    monkeypatch.setattr(tasklist, "PER_PAGE", 5)
    client = client_for(people.project_admin)
    response = listing(client, people.project, q="slide-1", sort="readings", dir="desc")
    query = parse_qs(NEXT.search(response.content.decode()).group(1).replace("&amp;", "&"))
    assert query["q"] == ["slide-1"] and query["sort"] == ["readings"]
    assert query["dir"] == ["desc"] and "after" in query


def test_a_cursor_of_another_sort_starts_over(many, people, client_for, monkeypatch):
    monkeypatch.setattr(tasklist, "PER_PAGE", 5)
    client = client_for(people.project_admin)
    cursor = tasklist.cursor_encode("slide-1.svs", many[3].pk)
    first = ids(listing(client, people.project))
    assert ids(listing(client, people.project, sort="readings", after=cursor)) == ids(
        listing(client, people.project, sort="readings")
    )
    assert first == [t.pk for t in many[:5]]


def test_the_url_round_trips(scene, client_for):
    client = client_for(scene.people.project_admin)
    params = {
        "q": "organ:lung",
        "state": "drafted",
        "review": "disagreement",
        "reviewer": "paul",
        "category": "missed finding",
        "date_of": "task",
        "from": "2020-01-01",
        "to": "2099-12-31",
        "prompt": "2",
        "flag": ["truncated", "disagreement"],
        "sort": "name",
        "dir": "desc",
    }
    response = listing(client, scene.people.project, **params)
    assert ids(response) == [scene.lung.pk]
    f = response.context["f"]
    assert parse_qs(urlencode(f.params(), doseq=True)) == parse_qs(urlencode(params, doseq=True))
    page = response.content.decode()
    for needle in ('value="organ:lung"', '<option value="paul" selected>', 'value="2"'):
        assert needle in page
    assert 'value="truncated" checked' in page and 'value="2099-12-31"' in page


def test_htmx_gets_the_table_only(scene, client_for):
    client = client_for(scene.people.project_admin)
    url = reverse("project-tasks", args=[scene.people.project.pk])
    response = client.get(url + "?q=colon", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="task-table")
    page = response.content.decode()
    assert page.lstrip().startswith('<section id="task-table"') and "<form" not in page
    assert ids(response) == [scene.colon.pk]


def test_the_project_page_links_to_the_list(people, client_for):
    page = client_for(people.researcher).get(reverse("project-detail", args=[people.project.pk]))
    assert reverse("project-tasks", args=[people.project.pk]) in page.content.decode()


# Access and safety ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "who,status",
    [("outsider", 404), ("other_admin", 404), ("other_pathologist", 404), ("researcher", 200)],
)
def test_only_members_see_the_list(scene, client_for, who, status):
    response = listing(client_for(getattr(scene.people, who)), scene.people.project)
    assert response.status_code == status


def test_anonymous_is_sent_to_log_in(scene, client):
    response = listing(client, scene.people.project)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_it_refuses_post(scene, client_for):
    url = reverse("project-tasks", args=[scene.people.project.pk])
    assert client_for(scene.people.project_admin).post(url).status_code == 405


def test_a_researcher_sees_every_task_as_on_the_project_page(scene, client_for):
    client = client_for(scene.people.researcher)
    assert len(ids(listing(client, scene.people.project))) == 5
    assert ids(listing(client, scene.people.project, reviewer="alice")) == [
        scene.colon.pk,
        scene.lung.pk,
    ]


def test_a_pathologist_filters_on_their_own_readings_only(scene, client_for):
    """Readers are blind to each other: a pathologist cannot find what others read."""
    client = client_for(scene.people.pathologist)
    project = scene.people.project
    assert len(ids(listing(client, project))) == 5  # every task, as on the project page
    assert ids(listing(client, project, reviewer="alice")) == []
    assert ids(listing(client, project, category="missed finding")) == [scene.lung.pk]
    assert ids(listing(client, project, category="wording only")) == []
    page = listing(client, project).content.decode()
    assert '<option value="alice"' not in page and '<option value="paul"' in page


def test_an_adjudicator_sees_every_reader(scene, client_for, django_user_model):
    ada = django_user_model.objects.create_user("ada", password="pw")
    membership_set(
        project=scene.people.project, user=ada, role=Role.ADJUDICATOR, actor=scene.people.admin
    )
    client = client_for(ada)
    assert ids(listing(client, scene.people.project, reviewer="alice")) == [
        scene.colon.pk,
        scene.lung.pk,
    ]


def test_html_in_file_names_and_search_is_escaped(people, client_for):
    add_task(people.project, "<script>alert(1)</script>.svs", metadata={"organ": "<b>x</b>"})
    client = client_for(people.project_admin)
    response = listing(client, people.project, q="<script>")
    page = response.content.decode()
    assert len(ids(response)) == 1
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert 'value="&lt;script&gt;"' in page
    assert len(ids(listing(client, people.project, q="organ:<b>x</b>"))) == 1


def test_queries_per_page_are_bounded(many, people, client_for, django_assert_max_num_queries):
    client = client_for(people.project_admin)
    # session, user, project, role (twice: the access check and the blind rule), the page,
    # the reviewers, and the session saved: none grows with the tasks or the filters.
    with django_assert_max_num_queries(10):
        listing(client, people.project, q="slide", reviewer="paul", sort="decided", dir="desc")


# A 10,000-task project ------------------------------------------------------------------

N_BIG = 10_000


@pytest.fixture
def big(people):
    """10,000 tasks bulk-created: names in 100 groups, manifests, every 7th read by paul
    (fast accept), every 10th on prompt v3, every 13th in disagreement."""
    p = people.project
    v3 = PromptTemplate.objects.create(project=p, version=3, instruction="Describe {organ}.")
    images = Image.objects.bulk_create(
        make_image_unsaved(f"case-{i % 100:03d}-{i}.svs", i) for i in range(N_BIG)
    )
    tasks = Task.objects.bulk_create(
        Task(
            project=p,
            image=image,
            state=TaskState.DRAFTED,
            metadata={"organ": ["breast", "colon", "lung"][i % 3], "batch": str(i % 50)},
            review_state="disagreement" if i % 13 == 0 else "open",
        )
        for i, image in enumerate(images)
    )
    drafts = Draft.objects.bulk_create(
        Draft(task=t, attempt=1, prompt_template=v3 if i % 10 == 0 else None, **draft_fields())
        for i, t in enumerate(tasks)
    )
    Label.objects.bulk_create(
        Label(
            task=t,
            draft=d,
            reviewer=people.pathologist,
            decision="accepted",
            text="Kept.",
            fast_accept=True,
        )
        for i, (t, d) in enumerate(zip(tasks, drafts, strict=True))
        if i % 7 == 0
    )
    tasklist.columns_rebuild([p.pk])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotations_task; ANALYZE annotations_image")
    return tasks


def make_image_unsaved(name: str, i: int) -> Image:
    return Image(
        sha256=f"{i + 10**9:064x}",
        file=f"images/big/{i}.svs",
        original_name=name,
        size_bytes=100,
        kind="photo",
        format="jpeg",
        width=640,
        height=480,
    )


def test_filters_and_sorting_work_on_10000_tasks(big, people, client_for):
    client = client_for(people.project_admin)
    project = people.project
    fast = ids(listing(client, project, flag="fast_accept", reviewer="paul"))
    assert fast == [t.pk for i, t in enumerate(big) if i % 7 == 0][:50]
    v3 = ids(listing(client, project, prompt="3", q="organ:colon", sort="id", dir="desc"))
    wanted = [t.pk for i, t in enumerate(big) if i % 10 == 0 and i % 3 == 1]
    assert v3 == wanted[::-1][:50]
    named = ids(listing(client, project, q="case-042-", sort="readings", dir="desc"))
    group = [(i % 7 == 0, t.pk) for i, t in enumerate(big) if i % 100 == 42]
    assert named == [pk for _, pk in sorted(group, reverse=True)][:50]
    both = ids(listing(client, project, flag=["disagreement", "fast_accept"]))
    assert both == [t.pk for i, t in enumerate(big) if i % 91 == 0][:50]


def test_page_n_costs_the_queries_of_page_1_on_10000_tasks(big, people, client_for):
    client = client_for(people.project_admin)
    url = reverse("project-tasks", args=[people.project.pk])
    first = client.get(url + "?sort=name")
    with connection.execute_wrapper(counter := QueryCounter()):
        client.get(url + "?sort=name")
    page_1 = counter.n
    far = big[9_000]
    cursor = tasklist.cursor_encode(far.image.original_name, far.pk)
    with connection.execute_wrapper(counter := QueryCounter()):
        response = client.get(url + "?" + urlencode({"sort": "name", "after": cursor}))
    assert counter.n == page_1
    assert len(ids(response)) == 50 and ids(first) != ids(response)
    assert not any("OFFSET" in sql.upper() for sql in counter.sql)
    on_page = Task.objects.filter(pk__in=ids(response))
    assert not on_page.filter(image__original_name__lt=far.image.original_name).exists()


class QueryCounter:
    def __init__(self):
        self.n, self.sql = 0, []

    def __call__(self, execute, sql, params, many, context):
        self.n += 1
        self.sql.append(sql)
        return execute(sql, params, many, context)


def test_keyset_pages_walk_10000_tasks_without_a_gap(big, people, client_for, monkeypatch):
    monkeypatch.setattr(tasklist, "PER_PAGE", 1000)
    client = client_for(people.project_admin)
    url = reverse("project-tasks", args=[people.project.pk])
    pages = walk(client, url + "?sort=readings&dir=desc")
    flat = [pk for page in pages for pk in page]
    assert len(flat) == N_BIG == len(set(flat))
    read = {t.pk for i, t in enumerate(big) if i % 7 == 0}
    assert set(flat[: len(read)]) == read  # the read ones first, then the rest
    assert flat[len(read) :] == sorted(set(flat) - read, reverse=True)


# In a browser ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_in_a_browser_htmx_swaps_the_table_pushes_the_url_and_meets_wcag(
    live_server, people, monkeypatch
):
    browser_tests = pytest.importorskip("tests.test_browser")
    if browser_tests.CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    monkeypatch.setattr(tasklist, "PER_PAGE", 2)
    for name in ("alpha.svs", "beta.svs", "gamma.svs", "<b>delta</b>.svs"):
        add_task(people.project, name, metadata={"organ": "breast"})
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with browser_tests.playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_tests.CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        csp = []
        page.on("console", lambda m: csp.append(m.text) if "Content Security" in m.text else None)
        browser_tests._log_in(page, live_server.url, "alice", "password")
        page.goto(live_server.url + reverse("project-tasks", args=[people.project.pk]))
        violations = browser_tests.run_axe(page)
        assert not violations, [v["id"] for v in violations]
        page.evaluate("window.notReloaded = true")
        page.fill("#tl-q", "a.svs")  # alpha, beta, gamma (and not delta's "a</b>.svs")
        page.click("#task-filters button[type=submit]")
        page.wait_for_url(re.compile(r"q=a\.svs"))
        page.click("a[rel=next]")
        page.wait_for_url(re.compile(r"after="))
        assert page.locator("#task-table tbody tr").count() == 1
        assert "gamma.svs" in page.inner_text("#task-table")
        assert page.evaluate("window.notReloaded === true")  # swapped, not reloaded
        page.go_back()
        page.wait_for_url(lambda u: "after=" not in u)
        assert "alpha.svs" in page.inner_text("#task-table")
        page.goto(live_server.url + reverse("project-tasks", args=[people.project.pk]) + "?q=delta")
        assert "<b>delta</b>.svs" in page.inner_text("#task-table")  # shown as text
        assert not csp, csp
        browser.close()


def test_the_migration_indexes_names_and_manifests(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        indexes = dict(cursor.fetchall())
    assert "jsonb_path_ops" in indexes["task_metadata_path"]
    assert {"image_name_trgm", "image_name_lower"} & set(indexes)
    assert "(project_id, id)" in indexes["task_project_id"]


@pytest.mark.parametrize("column", ["readings", "decided", "prompt", "name"])
def test_each_sort_is_an_index_scan_on_10000_tasks(big, people, column):
    """The sort columns are stored on the task with an index each: a page reads its 51 rows
    from the index, never counts every task's readings."""
    f = tasklist.TaskFilter(sort=column)
    tasks = tasklist.tasks_matching(people.project, f, user=people.project_admin, blind=False)
    order = [tasklist.SORTS[column], "id"]
    plan = tasks.order_by(*order)[:51].explain()
    assert "Index Scan" in plan and "Sort" not in plan.split("Index")[0], plan
    assert "annotations_label" not in plan


def test_the_file_name_is_kept_on_the_task_by_the_database_whoever_writes_it(people):
    """Created by the ORM, in bulk, by plain SQL, or saved with a wrong name: the task's
    `file_name` is its image's name, and follows a change of image."""
    one = make_task(people.project, image=make_image(original_name="b-one.svs"))
    bulk = Task.objects.bulk_create(
        [
            Task(
                project=people.project,
                image=make_image(original_name="a-bulk.jpg"),
                file_name="lie",
            )
        ]
    )[0]
    plain = make_image(original_name="c-plain.ndpi")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO annotations_task (project_id, image_id, state, error, metadata, "
            "attempt, message_pending, lost_attempts, created_at, updated_at, review_state, "
            "outcome, readings_count, decided_at, prompt_version, draft_truncated, file_name) "
            "VALUES (%s, %s, 'new', '', '{}', 0, false, 0, now(), now(), 'open', '', 0, "
            "%s, -1, false, '') RETURNING id",
            [people.project.pk, plain.pk, NO_DECISION],
        )
        raw = Task.objects.get(pk=cursor.fetchone()[0])
    names = dict(Task.objects.values_list("pk", "file_name"))
    assert (names[one.pk], names[bulk.pk], names[raw.pk]) == (
        "b-one.svs",
        "a-bulk.jpg",
        "c-plain.ndpi",
    )
    one.file_name = "wrong"
    one.image = make_image(original_name="d-moved.tif")
    one.save()
    assert Task.objects.get(pk=one.pk).file_name == "d-moved.tif"
    f = tasklist.TaskFilter(sort="name")
    tasks = tasklist.tasks_matching(people.project, f, user=people.project_admin, blind=False)
    page = tasklist.task_page(tasks, f)
    assert [t.file_name for t in page.tasks] == ["a-bulk.jpg", "c-plain.ndpi", "d-moved.tif"]
    # An image that does not exist is still the foreign key's refusal, not the trigger's.
    with pytest.raises(IntegrityError, match="image_id"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checked now, not at commit
        Task.objects.create(project=people.project, image_id=10**9)


def stored(task: Task) -> tuple:
    task.refresh_from_db()
    return (task.readings_count, task.decided_at, task.prompt_version, task.draft_truncated)


def rebuilt(task: Task) -> tuple:
    tasklist.columns_rebuild([task.project_id])
    return stored(task)


def test_decisions_changes_undo_and_redrafts_keep_the_stored_columns(people):
    """What the services write matches what a recount computes from the rows, at each step."""
    task = make_drafted_task(people.project)
    assert stored(task)[:3] == (0, NO_DECISION, 0)
    first = services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=task.drafts.get().pk,
    )
    after_one = stored(task)
    assert after_one[0] == 1 and after_one[1] == first.updated_at
    assert after_one == rebuilt(task)
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="edited",
        text="Changed.",
        draft_id=task.drafts.get().pk,
        label_revision=1,
    )
    changed = stored(task)
    assert changed[0] == 1 and changed[1] > after_one[1]
    assert changed == rebuilt(task)
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)  # back to the accept
    assert stored(task) == rebuilt(task)
    other = make_drafted_task(people.project)
    services.label_record(
        task_id=other.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=other.drafts.get().pk,
    )
    services.label_undo(task_id=other.pk, reviewer=people.pathologist)  # the reading goes
    assert stored(other)[:2] == (0, NO_DECISION) and stored(other) == rebuilt(other)


def test_a_new_draft_sets_its_prompt_version_and_truncation(people):
    project = people.project
    v2 = PromptTemplate.objects.create(project=project, version=2, instruction="Describe it.")
    task = make_drafted_task(project)
    assert stored(task)[2:] == (0, False)  # the default prompt
    services.task_transition(task_id=task.pk, to=TaskState.QUEUED, reason="redraft")
    claimed = services.task_claim(task_id=task.pk)
    fields = draft_fields(prompt_template=v2, truncated=True)
    services.draft_record(task_id=task.pk, attempt=claimed.attempt, fields=fields)
    assert stored(task)[2:] == (2, True)
    assert stored(task) == rebuilt(task)
