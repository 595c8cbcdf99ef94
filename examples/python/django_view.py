"""A Django view that stores only anonymised photos, as one runnable file.

    pip install obscura django
    python django_view.py runserver

In a project, `anonymizer` lives in a module imported once (e.g. the app's `apps.py` or
a `services.py`), and `upload_photo` is an ordinary view in `views.py`. The upload itself
is never stored or echoed: Obscura raises instead of returning it.
"""

from __future__ import annotations

import sys

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-secret",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["localhost", "127.0.0.1", "testserver"],
        DATA_UPLOAD_MAX_MEMORY_SIZE=32 * 1024 * 1024,
        FILE_UPLOAD_MAX_MEMORY_SIZE=32 * 1024 * 1024,
    )

from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

import obscura  # noqa: E402

# Built once per process: it loads ONNX Runtime and the models. Thread-safe.
anonymizer = obscura.Anonymizer()


@csrf_exempt  # an API endpoint for this example; keep CSRF protection for browser forms
@require_POST
def upload_photo(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("photo")
    if upload is None:
        return JsonResponse({"error": "send the photo as the multipart field 'photo'"}, status=400)
    try:
        result = anonymizer.anonymize(upload.read())
    except obscura.InvalidImage as e:
        return JsonResponse({"error": f"not a photo Obscura can anonymise: {e}"}, status=422)
    except obscura.Error:
        return JsonResponse({"error": "the photo could not be anonymised"}, status=500)
    # store(result.data) ...
    response = HttpResponse(result.data, content_type=f"image/{result.format}")
    response["X-Regions-Redacted"] = str(len(result.regions))
    return response


urlpatterns = [path("photos", upload_photo)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
