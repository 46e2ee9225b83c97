import io
import shutil
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from annotations import exportjobs, exports
from annotations.access import Can, capabilities
from annotations.models import Decision, Project, ReviewState

# Options given as the export URL's query names them (ExportOptions.from_query).
_QUERY_NAMES = {
    "decision": "decision",
    "review_state": "review_state",
    "reviewer": "reviewer",
    "date_from": "from",
    "date_to": "to",
    "model_id": "model_id",
    "prompt_version": "prompt_version",
    "split": "split",
    "split_seed": "split_seed",
}


class Command(BaseCommand):
    help = (
        "Export a project's validated labels. The export is recorded once it ends, as the "
        "page's are: each exported task's history lists it, and the audit trail has it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument(
            "--user",
            metavar="USERNAME",
            help="who runs the export, as recorded (one who may export the project); "
            "without it, the record says only: the command line",
        )
        parser.add_argument("--format", default="jsonl", choices=list(exports.FORMATS))
        parser.add_argument(
            "--out",
            default="-",
            help="output file, or - for stdout; --format hf: a new folder; --with-images: a zip",
        )
        parser.add_argument(
            "--with-images",
            action="store_true",
            help="chat, dpo, kto: a zip of the rows and the images they name",
        )
        parser.add_argument(
            "--readings", action="store_true", help="every reading of a double-read task"
        )
        parser.add_argument(
            "--history", action="store_true", help="each label's earlier versions (the audit)"
        )
        filters = parser.add_argument_group("filters")
        filters.add_argument("--decision", choices=list(Decision.values))
        filters.add_argument("--review-state", choices=list(ReviewState.values))
        filters.add_argument("--reviewer", help="a username, or its pseudonym")
        filters.add_argument("--from", dest="date_from", help="labelled on or after (ISO date)")
        filters.add_argument("--to", dest="date_to", help="labelled on or before (ISO date)")
        filters.add_argument("--model-id", help="the model, as exported or as recorded")
        filters.add_argument("--prompt-version")
        filters.add_argument(
            "--meta", action="append", default=[], metavar="KEY=VALUE", help="manifest field"
        )
        parser.add_argument(
            "--split", help="train,validation,test ratios (80,10,10): a `split` column"
        )
        parser.add_argument("--split-seed", help="the split's seed (an integer; 0)")
        parser.add_argument(
            "--reviewer-names", action="store_true", help="usernames, not pseudonyms"
        )

    def handle(self, *args, project, format, out, readings, history, user, **options):
        query = {
            "format": format,
            "readings": "all" if readings else "",
            "history": "1" if history else "",
            "reviewer_names": "1" if options["reviewer_names"] else "",
            "with_images": "1" if options["with_images"] else "",
        }
        for name, key in _QUERY_NAMES.items():
            if options.get(name) is not None:
                query[key] = str(options[name])
        for pair in options["meta"]:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise CommandError(f"--meta takes KEY=VALUE, not {pair!r}.")
            query[f"meta.{key.strip()}"] = value
        chosen = exports.ExportOptions.from_query(query)
        self._check(chosen, query)
        target = Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"No project named {project!r}.")
        if options["with_images"] and not chosen.with_images:
            raise CommandError("--with-images goes with --format chat, dpo or kto.")
        requested_by = self._requested_by(user, target)
        if chosen.file_format == "zip":
            if out == "-":
                raise CommandError("This export is files: give --out.")
            if Path(out).exists():
                raise CommandError(f"{out} exists already: give a new name.")
        record = dict(
            project=target,
            requested_by=requested_by,
            options=chosen,
            output="stdout" if out == "-" else str(Path(out).resolve()),
            started_at=timezone.now(),
        )
        try:
            count = self._write(target, out, chosen)
        except BaseException as exc:
            self._record_failure(record, exc)
            raise
        job = exportjobs.export_command_record(**record, rows=count)
        self.stderr.write(f"exported {count} label(s) from {target.name!r} (export {job.pk})")

    def _requested_by(self, username: str | None, project: Project):
        """The user named by --user, who must be active and may export `project`."""
        if username is None:
            return None
        users = get_user_model().objects.filter(is_active=True)
        user = users.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}.")
        if Can.EXPORT not in capabilities(user, project):
            raise CommandError(f"{username!r} may not export {project.name!r}.")
        return user

    def _record_failure(self, record: dict, exc: BaseException) -> None:
        """A failed export is recorded as failed, with no task included; a record that
        cannot be written (the database gone) must not hide why the export failed."""
        try:
            exportjobs.export_command_record(**record, rows=0, error=f"{type(exc).__name__}: {exc}")
        except Exception as failure:  # noqa: BLE001 - the export's own error is raised next
            self.stderr.write(f"The failed export could not be recorded: {failure}")

    def _write(self, target: Project, out: str, chosen) -> int:
        """Write the export (streamed, as ever); its rows."""
        if chosen.file_format == "zip":
            return self._write_files(target, out, chosen)
        if out == "-":
            return exports.write_export_options(target, sys.stdout, chosen)
        path = Path(out)
        tmp = path.with_name(path.name + ".part")
        tmp.unlink(missing_ok=True)
        # Counted as it is written (one count per block, as an export job does): the rows
        # so far on stderr.
        skip = 1 if chosen.format == "csv" else 0  # the header line
        with exportjobs.CountingFile(tmp, self._progress, skip=skip) as raw:
            fh = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", newline="")
            count = exports.write_export_options(target, fh, chosen)
            fh.flush()
            fh.detach()
        tmp.replace(path)  # a reader never sees a half-written export
        self.stderr.write("")
        return count

    def _write_files(self, target, out: str, chosen) -> int:
        """A Hugging Face dataset (a new folder) or a training set with its images (a zip),
        written under a temporary name, then renamed."""
        path = Path(out)
        tmp = path.with_name(f".{path.name}.part")
        if chosen.format == exports.HF:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                count = exports.write_hf(target, tmp, chosen, self._progress)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        else:
            tmp.unlink(missing_ok=True)
            try:
                count = exports.write_export_file(target, tmp, chosen, self._progress)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        tmp.replace(path)
        self.stderr.write("")
        return count

    def _progress(self, rows: int) -> None:
        self.stderr.write(f"\r{rows} row(s) written", ending="")
        self.stderr.flush()

    def _check(self, chosen, query) -> None:
        """A value the URL would ignore is an error here: someone typed it."""
        for name, key in _QUERY_NAMES.items():
            given = query.get(key, "").strip()
            ignored = (
                str(chosen.split_seed) != given.lstrip("+")
                if name == "split_seed"
                else getattr(chosen, name) in ("", None)
            )
            if given and ignored:
                raise CommandError(f"Bad value for --{key.replace('_', '-')}: {given!r}.")
