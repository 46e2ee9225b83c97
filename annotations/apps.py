from pathlib import Path

from django.apps import AppConfig
from django.conf import settings

from annotations import signals  # noqa: F401 - connects the login audit receivers


class AnnotationsConfig(AppConfig):
    name = "annotations"
    verbose_name = "Annotations"

    def ready(self) -> None:
        # Django writes large uploads there and fails if it is missing.
        if getattr(settings, "FILE_UPLOAD_TEMP_DIR", None):
            Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
