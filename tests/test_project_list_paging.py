"""The project list pages by keyset (name, then id): a superuser may see thousands of
projects, and page N costs what page 1 does."""

import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotations import views
from annotations.models import Membership, Modality, Project, ProjectCounters, Role

pytestmark = pytest.mark.django_db

LIST = reverse("project-list")


def make_projects(names) -> list[Project]:
    projects = Project.objects.bulk_create(
        [Project(name=name, modality=Modality.PATHOLOGY) for name in names]
    )
    ProjectCounters.objects.bulk_create([ProjectCounters(project=p) for p in projects])
    return projects


def shown(body: str, *, ids: bool = False) -> list:
    """The project names of a page (or their ids), in order."""
    rows = re.findall(r'<td><a href="/projects/(\d+)/">([^<]*)</a></td>', body)
    return [int(pk) for pk, _ in rows] if ids else [unescape(name) for _, name in rows]


def next_link(body: str) -> str | None:
    found = re.search(r'<a href="(\?[^"]*)" rel="next"', body)
    return LIST + unescape(found.group(1)) if found else None


def all_pages(client, url=LIST, *, ids: bool = False) -> list[list]:
    pages = []
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        body = response.content.decode()
        pages.append(shown(body, ids=ids))
        url = next_link(body)
    return pages


def in_database_order(names) -> list[str]:
    """`names` as PostgreSQL sorts them (its collation, not Python's)."""
    return list(
        Project.objects.filter(name__in=names).order_by("name", "pk").values_list("name", flat=True)
    )


def test_a_superuser_pages_through_all_projects_fifty_at_a_time(people, client_for):
    names = [f"Project {i:03}" for i in range(118)]
    make_projects(names)
    everyone = in_database_order([*names, "Breast biopsies", "Melanoma photos"])
    pages = all_pages(client_for(people.superuser))
    assert [len(page) for page in pages] == [50, 50, 20]
    assert [name for page in pages for name in page] == everyone  # no gap, no repeat


def test_the_pages_are_an_accessible_nav_with_next_and_first_links(people, client_for):
    make_projects(f"Project {i:03}" for i in range(60))
    client = client_for(people.superuser)
    first = client.get(LIST).content.decode()
    nav = re.search(r'<nav class="pager" aria-label="Project pages">(.*?)</nav>', first, re.S)
    assert nav and "Next page" in nav.group(1) and "First page" not in nav.group(1)
    second = client.get(next_link(first)).content.decode()
    nav = re.search(r'<nav class="pager" aria-label="Project pages">(.*?)</nav>', second, re.S)
    assert nav and f'href="{LIST}" rel="first"' in nav.group(1)
    assert "Next page" not in nav.group(1)  # the last page


def test_one_page_has_no_pager(people, client_for):
    body = client_for(people.pathologist).get(LIST).content.decode()
    assert shown(body) == ["Breast biopsies"]
    assert 'aria-label="Project pages"' not in body


def test_a_member_pages_through_only_their_projects(people, client_for, monkeypatch):
    monkeypatch.setattr(views, "PROJECTS_PER_PAGE", 7)
    mine = make_projects(f"Mine {i:02}" for i in range(20))
    make_projects(f"Theirs {i:02}" for i in range(20))
    Membership.objects.bulk_create(
        [Membership(project=p, user=people.pathologist, role=Role.PATHOLOGIST) for p in mine]
    )
    pages = all_pages(client_for(people.pathologist))
    assert [len(page) for page in pages] == [7, 7, 7]
    expected = in_database_order([p.name for p in mine] + ["Breast biopsies"])
    assert [name for page in pages for name in page] == expected


def test_the_cursor_survives_names_that_sort_together_and_hold_commas(
    people, client_for, monkeypatch
):
    # Names are unique (a constraint), so the id breaks no tie here: the cursor must still
    # split "<name>,<id>" at the last comma, and compare names as PostgreSQL does.
    monkeypatch.setattr(views, "PROJECTS_PER_PAGE", 1)
    names = ["Biopsy", "biopsy", "Biopsy,", "Biopsy, left", "Biopsy,,12", "Biopsy 12", "Ä, 1"]
    make_projects(names)
    pages = all_pages(client_for(people.superuser))
    assert all(len(page) == 1 for page in pages)
    everyone = in_database_order([*names, "Breast biopsies", "Melanoma photos"])
    assert [page[0] for page in pages] == everyone


def test_the_cursor_survives_equal_names(people, client_for, monkeypatch):
    # Names are unique today (a constraint); should two ever be equal, the id breaks the
    # tie. The constraint is dropped inside this test's transaction, rolled back after it.
    table = Project._meta.db_table
    with connection.cursor() as cursor:
        for name, c in connection.introspection.get_constraints(cursor, table).items():
            if c["unique"] and c["columns"] == ["name"] and not c["primary_key"]:
                cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
    monkeypatch.setattr(views, "PROJECTS_PER_PAGE", 2)
    make_projects(["Biopsy"] * 5)  # a page boundary falls between equal names twice
    pages = all_pages(client_for(people.superuser), ids=True)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    expected = list(Project.objects.order_by("name", "pk").values_list("pk", flat=True))
    assert [pk for page in pages for pk in page] == expected


def test_the_cursor_of_a_project_deleted_meanwhile_still_gives_the_next_page(
    people, client_for, monkeypatch
):
    monkeypatch.setattr(views, "PROJECTS_PER_PAGE", 2)
    make_projects(["A 1", "A 2", "A 3", "A 4"])
    client = client_for(people.superuser)
    first = client.get(LIST).content.decode()
    assert shown(first) == ["A 1", "A 2"]
    Project.objects.filter(name="A 2").delete()  # the cursor's own project
    assert shown(client.get(next_link(first)).content.decode()) == ["A 3", "A 4"]


@pytest.mark.parametrize(
    "after",
    [
        "garbage",
        "",
        ",",
        ",12",
        "Project 010,",
        "Project 010,abc",
        "Project 010,-1",
        "Project 010,0",
        "Project 010,1e3",
        "Project 010,١٢",  # digits, but not ASCII ones
        "Project 010,99999999999999999999999",  # past bigint
        "Project\x00010,1",  # NUL: PostgreSQL refuses it in text
        "x" * 1000 + ",1",
    ],
)
def test_a_garbage_cursor_gives_page_one_not_an_error(people, client_for, after):
    make_projects(f"Project {i:03}" for i in range(60))
    client = client_for(people.superuser)
    page_one = shown(client.get(LIST).content.decode())
    response = client.get(LIST, {"after": after})
    assert response.status_code == 200
    assert shown(response.content.decode()) == page_one


def test_a_cursor_past_the_end_says_so(people, client_for):
    response = client_for(people.superuser).get(LIST, {"after": "zzz,1"})
    body = response.content.decode()
    assert response.status_code == 200 and shown(body) == []
    assert "No more projects." in body and 'rel="first"' in body


def test_page_two_costs_the_same_queries_as_page_one_and_no_offset(people, client_for):
    make_projects(f"Project {i:03}" for i in range(130))
    client = client_for(people.superuser)
    client.get(LIST)  # the session and user, warmed up alike for both pages
    with CaptureQueriesContext(connection) as one:
        body = client.get(LIST).content.decode()
    url = next_link(body)
    assert parse_qs(urlsplit(url).query)["after"]
    with CaptureQueriesContext(connection) as two:
        assert shown(client.get(url).content.decode())[0] == "Project 048"
    assert len(two) == len(one)
    assert not [q["sql"] for q in [*one, *two] if "OFFSET" in q["sql"]]
    listing = [q["sql"] for q in two if '"annotations_project"."name" >=' in q["sql"]]
    assert len(listing) == 1 and "LIMIT 51" in listing[0], listing
