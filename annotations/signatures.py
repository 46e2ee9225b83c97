"""Signed validation (21 CFR Part 11 §11.50, §11.200): where a project asks for it, each
decision carries its reader's signature, and the reader confirms with their password once
per sitting.

A sitting is this browser session's, for one project: the session keeps when it ends, so
that deciding checks it in memory (the review queue's hot path reads no more). Logging out
flushes the session, and with it the sitting. Readings and adjudications share it: a
password typed on either page signs on both until the sitting ends.
"""

from __future__ import annotations

import time

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from annotations import services
from annotations.models import Project, Task

# What signing a decision means, shown before the reader signs and stored with the label.
MEANING = "reviewed and approved as accurate"
# What an adjudicator's signature means: they settled the readers' disagreement.
ADJUDICATION_MEANING = "adjudicated the readings and approved this as the final label"
MIN_SITTING_MINUTES, MAX_SITTING_MINUTES = 1, 12 * 60

REFUSED = "That password is not right: nothing was saved. Type your password again to sign."
ASKED = "Type your password to sign this decision."


def _clock() -> float:
    """Seconds since the epoch (a seam for tests that move time)."""
    return time.time()


def _key(project: Project) -> str:
    return f"signature-sitting-{project.pk}"


def signature_due(session, project: Project) -> bool:
    """Whether a decision in `project` needs the password now: the project asks for
    signatures and this session has no sitting running there. Memory only."""
    if not project.signature_required:
        return False
    until = session.get(_key(project))
    return until is None or until <= _clock()


def sitting_start(session, project: Project) -> None:
    """Start a sitting in `project`, once the password was right: it lasts the project's
    sitting length from now, and is not extended by deciding."""
    session[_key(project)] = _clock() + project.signature_sitting_minutes * 60


def signature_for(
    user: AbstractBaseUser, project: Project, *, meaning: str = MEANING
) -> services.Signature | None:
    """The signature a decision by `user` in `project` carries (None where none is asked):
    a reading's by default, an adjudication's with `meaning=ADJUDICATION_MEANING`."""
    if not project.signature_required:
        return None
    name = user.get_full_name().strip() or user.get_username()
    return services.Signature(name=name, at=timezone.now(), meaning=meaning)


def password_confirm(*, user: AbstractBaseUser, password: str, task: Task) -> bool:
    """Whether `password` is `user`'s. A wrong one is audited (`signature.refused`, the
    password never kept) in a transaction of its own: the refusal stays recorded."""
    if password and user.check_password(password):
        return True
    with transaction.atomic():
        services.audit_record(
            action="signature.refused",
            actor=user,
            project=task.project,
            task=task,
            reason="wrong password" if password else "no password",
        )
    return False


def project_signature_settings_set(
    *, project: Project, required: bool, sitting_minutes: int, actor: AbstractBaseUser
) -> Project:
    """Set whether `project` asks for a signature on each decision, and its sitting length
    in minutes; audited (`project.signature_settings`) when it changes."""
    if not MIN_SITTING_MINUTES <= sitting_minutes <= MAX_SITTING_MINUTES:
        raise ValueError(
            f"A sitting lasts from {MIN_SITTING_MINUTES} to {MAX_SITTING_MINUTES} minutes."
        )
    before = {
        "signature_required": project.signature_required,
        "signature_sitting_minutes": project.signature_sitting_minutes,
    }
    after = {"signature_required": required, "signature_sitting_minutes": sitting_minutes}
    if before == after:
        return project
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(**after)
        project.signature_required, project.signature_sitting_minutes = required, sitting_minutes
        services.audit_record(
            action="project.signature_settings",
            actor=actor,
            project=project,
            before=before,
            after=after,
        )
    return project
