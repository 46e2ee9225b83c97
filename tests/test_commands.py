"""create_project, import_images, export_labels, build_demo_model, seed_demo."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotations import exportjobs, services
from annotations.models import Membership, Project, Task
from tests.factories import make_drafted_task


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_create_project_with_members(people):
    out = run(
        "create_project",
        "Lung",
        "--modality",
        "pathology",
        "--member",
        "paul:pathologist",
        "--member",
        "rita:researcher",
    )
    project = Project.objects.get(name="Lung")
    assert "created project 'Lung'" in out
    assert dict(
        Membership.objects.filter(project=project).values_list("user__username", "role")
    ) == {
        "paul": "pathologist",
        "rita": "researcher",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["Lung", "--modality", "pathology", "--member", "nobody:pathologist"],
        ["Lung", "--modality", "pathology", "--member", "paul:surgeon"],
        ["Breast biopsies", "--modality", "pathology"],
    ],
)
def test_create_project_refuses_bad_arguments(people, args):
    with pytest.raises(CommandError):
        run("create_project", *args)
    assert not Project.objects.filter(name="Lung").exists()


def test_import_images_keeps_the_good_and_exits_non_zero(
    people, tmp_path, sample_files, django_capture_on_commit_callbacks
):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_files["photo"].read_bytes())
    (folder / "b.tiff").write_bytes(sample_files["slide"].read_bytes())
    (folder / "c.jpg").write_bytes(b"")
    (folder / ".hidden.jpg").write_bytes(b"x")
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError) as err:
        call_command(
            "import_images",
            str(folder),
            str(folder / "a.jpg"),
            "--project",
            "Breast biopsies",
            stdout=out,
        )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("imported") and lines[0].endswith(")") and "a.jpg" in lines[0]
    assert lines[1].startswith("imported") and "b.tiff" in lines[1]
    assert lines[2].startswith("rejected") and "c.jpg" in lines[2]
    assert lines[3].startswith("duplicate") and "a.jpg" in lines[3]
    assert "1 file(s) rejected" in str(err.value)
    assert Task.objects.filter(project=people.project).count() == 2


def test_import_images_exits_zero_when_all_are_kept(
    people, sample_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        out = run("import_images", str(sample_files["photo"]), "--project", "Breast biopsies")
    assert out.startswith("imported")


def test_export_labels_writes_jsonl(people, tmp_path):
    task = make_drafted_task(people.project, text="Benign.")
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=task.latest_draft().pk,
    )
    out = tmp_path / "labels.jsonl"
    run("export_labels", "--project", "Breast biopsies", "--format", "jsonl", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (
        len(rows) == 1 and rows[0]["final_text"] == "Benign." and rows[0]["decision"] == "accepted"
    )
    assert not (tmp_path / "labels.jsonl.part").exists()


@pytest.mark.parametrize("format", ["jsonl", "csv"])
def test_export_labels_shows_its_progress(people, tmp_path, monkeypatch, format):
    monkeypatch.setattr(exportjobs, "PROGRESS_ROWS", 2)
    for _ in range(5):
        task = make_drafted_task(people.project, text="Benign.")
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            decision="accepted",
            draft_id=task.latest_draft().pk,
        )
    out, err = tmp_path / f"labels.{format}", StringIO()
    call_command(
        "export_labels",
        "--project",
        "Breast biopsies",
        "--format",
        format,
        "--out",
        str(out),
        stderr=err,
    )
    assert "row(s) written" in err.getvalue() and "exported 5 label(s)" in err.getvalue()
    assert len(out.read_text().splitlines()) == 5 + (format == "csv")


def test_export_labels_keeps_an_overwritten_decision_with_history(people, tmp_path):
    task = make_drafted_task(people.project, text="Benign.")
    record = dict(task_id=task.pk, reviewer=people.pathologist, draft_id=task.latest_draft().pk)
    services.label_record(**record, decision="accepted")
    services.label_record(**record, decision="edited", text="Benign, fibrotic.", label_revision=1)
    out = tmp_path / "labels.jsonl"
    run("export_labels", "--project", "Breast biopsies", "--history", "--out", str(out))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["decision"] == "edited"
    assert [v["decision"] for v in row["earlier_versions"]] == ["accepted"]


def test_seed_demo_is_safe_to_run_twice(db, tmp_path, settings, django_capture_on_commit_callbacks):
    settings.BASE_DIR = tmp_path
    logins = tmp_path / "logins.txt"
    with django_capture_on_commit_callbacks(execute=False):
        first = run("seed_demo", "--logins-file", str(logins), "--no-draft")
        second = run("seed_demo", "--logins-file", str(logins), "--no-draft")
    assert "pathologist" in first and "password" in first
    assert Project.objects.filter(name__startswith="Demo").count() == 2
    assert Task.objects.count() == 5
    assert "duplicate" in second
    assert first.splitlines()[-3:] == second.splitlines()[-3:]  # same logins printed


def test_import_images_takes_manifest_fields_for_prompts(
    people, tmp_path, sample_files, django_capture_on_commit_callbacks
):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,organ,procedure\nlesion-1.jpg,breast,core biopsy\n")
    with django_capture_on_commit_callbacks(execute=False):
        run(
            "import_images",
            str(sample_files["photo"]),
            "--project",
            "Breast biopsies",
            "--manifest",
            str(manifest),
        )
    task = Task.objects.get(project=people.project)
    assert task.metadata == {"organ": "breast", "procedure": "core biopsy"}


def test_import_images_refuses_a_manifest_without_a_file_column(people, tmp_path, sample_files):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("name,organ\nx.jpg,lung\n")
    with pytest.raises(CommandError, match="needs a `file` column"):
        run(
            "import_images",
            str(sample_files["photo"]),
            "--project",
            "Breast biopsies",
            "--manifest",
            str(manifest),
        )
    assert not Task.objects.exists()
