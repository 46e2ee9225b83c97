from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotations import services
from annotations.models import Modality, Project, Role


class Command(BaseCommand):
    help = "Create a project, optionally with members (USER:ROLE)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--modality", required=True, choices=Modality.values)
        parser.add_argument(
            "--member",
            action="append",
            default=[],
            metavar="USER:ROLE",
            help=f"an existing user and a role ({', '.join(Role.values)}); repeatable",
        )
        parser.add_argument("--prompt", default="", help="instruction replacing the default")

    def handle(self, *args, name, modality, member, prompt, **options):
        if Project.objects.filter(name=name).exists():
            raise CommandError(f"A project named {name!r} exists already.")
        User = get_user_model()
        members = []
        for spec in member:
            username, sep, role = spec.rpartition(":")
            if not sep or role not in Role.values:
                raise CommandError(f"--member {spec!r}: use USER:ROLE, ROLE one of {Role.values}")
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"--member {spec!r}: no user named {username!r}")
            members.append((user, role))
        with transaction.atomic():
            project = services.project_create(
                name=name, modality=modality, members=members, prompt=prompt
            )
        self.stdout.write(f"created project {project.name!r} (id {project.pk}, {modality})")
