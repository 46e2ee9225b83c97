"""The bench's URLconf: the project's URLs plus a trivial view behind login_required, the
baseline that `bench/review.py` compares the review pages with."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


@login_required
def trivial(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bench/trivial/", trivial, name="bench-trivial"),
    path("", include("medannot.urls")),
]
