"""A demo project with one user per role and a few generated images. Safe to run twice."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from annotations import services
from annotations.models import Modality, Project, Role
from imaging import samples

USERS = [("admin", Role.ADMIN), ("pathologist", Role.PATHOLOGIST), ("researcher", Role.RESEARCHER)]


class Command(BaseCommand):
    help = "Create demo users, projects and sample images (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--logins-file", default=str(settings.BASE_DIR / "var" / "demo-logins.txt")
        )
        parser.add_argument("--no-draft", action="store_true")

    def handle(self, *args, logins_file, no_draft, **options):
        logins_path = Path(logins_file)
        logins = _read_logins(logins_path)
        User = get_user_model()
        users = {}
        for username, role in USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                password = secrets.token_urlsafe(9)
                user = User.objects.create_user(username, password=password)
                logins[username] = password
            if role == Role.ADMIN:
                # The demo admin runs the site: superuser is the one site-wide power.
                user.is_staff = user.is_superuser = True
                user.save(update_fields=["is_staff", "is_superuser"])
            users[username] = (user, role)
        _write_logins(logins_path, logins)

        sample_dir = settings.BASE_DIR / "var" / "samples"
        sample_dir.mkdir(parents=True, exist_ok=True)
        demos = {
            ("Demo pathology", Modality.PATHOLOGY): [
                # Big enough for several patches at 1 µm per pixel.
                samples.write_synthetic_slide(
                    sample_dir / "demo-slide-generic.tiff",
                    seed=1,
                    width=6144,
                    height=4096,
                    mpp=0.5,
                ),
                samples.write_synthetic_slide(
                    sample_dir / "demo-slide-aperio.svs",
                    seed=2,
                    flavour="aperio",
                    width=3072,
                    height=2048,
                ),
            ],
            ("Demo dermatology", Modality.DERMATOLOGY): [
                samples.write_derm_photo(sample_dir / f"demo-lesion-{i}.jpg", seed=i)
                for i in range(1, 4)
            ],
        }
        for (name, modality), files in demos.items():
            project = Project.objects.filter(name=name).first()
            if project is None:
                project = services.project_create(name=name, modality=modality)
            for user, role in users.values():
                services.membership_set(project=project, user=user, role=role)
            for path in files:
                result = services.image_ingest(
                    project=project,
                    source=path,
                    original_name=path.name,
                    uploaded_by=users["researcher"][0],
                    enqueue=not no_draft,
                )
                self.stdout.write(f"  {name}: {result.status:9} {path.name}")

        self.stdout.write(self.style.SUCCESS(f"Demo logins (also in {logins_path}):"))
        for username, role in USERS:
            password = logins.get(username, "(set before; unchanged)")
            self.stdout.write(f"  {role:12} user {username!r:14} password {password}")


def _read_logins(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    return {user: password for user, password in pairs}


def _write_logins(path: Path, logins: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u} {p}\n" for u, p in logins.items()))
    path.chmod(0o600)
