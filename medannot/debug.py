"""Error reports that keep secrets out: of settings, request.META and traceback variables."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SecretsHiddenFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding anything that may hold a connection URL or its password.

    DATABASE_URL, REDIS_URL, CELERY_BROKER_URL and CACHES' LOCATION carry passwords in their
    URLs, and a failed connection leaves them in the traceback's local variables.
    """

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE"
        "|URL|URI|DSN|BROKER|LOCATION|DATABASE|CONNINFO|CREDENTIAL",
        flags=re.I,
    )

    def get_traceback_frame_variables(self, request, tb_frame):
        # Variables by name, as settings are: a local `conn_params` dict loses its password.
        return [
            (name, self._cleanse_variable(name, value))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _cleanse_variable(self, name, value):
        try:
            return self.cleanse_setting(name, value)
        except RecursionError:  # a dict that contains itself: show nothing rather than fail
            return self.cleansed_substitute
