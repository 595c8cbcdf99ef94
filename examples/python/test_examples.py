"""The FastAPI and Django examples, driven through each framework's own test client:
a photo comes back anonymised, a non-image gets a 422 that does not echo it, and neither
ever returns the upload."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

# The examples are files beside this test, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

EVAL = Path(os.environ.get("OBSCURA_EVAL_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "eval"))
PHOTO = (EVAL / "images" / "wider_8_Election_Campain_Election_Campaign_8_69.jpg").read_bytes()
NOT_A_PHOTO = b"name,email\ncarol-unique-upload,carol@example.org\n"


def test_fastapi_upload_endpoint() -> None:
    from fastapi.testclient import TestClient

    import fastapi_app

    client = TestClient(fastapi_app.app)
    ok = client.post("/photos", files={"photo": ("me.jpg", PHOTO, "image/jpeg")})
    assert ok.status_code == 200, ok.text
    assert ok.headers["content-type"] == "image/jpeg" and int(ok.headers["x-regions-redacted"]) >= 1
    assert ok.content[:2] == b"\xff\xd8" and ok.content != PHOTO
    bad = client.post("/photos", files={"photo": ("me.jpg", NOT_A_PHOTO, "image/jpeg")})
    assert bad.status_code == 422 and b"carol-unique-upload" not in bad.content
    truncated = client.post("/photos", files={"photo": ("me.jpg", PHOTO[: len(PHOTO) // 2], "image/jpeg")})
    assert truncated.status_code == 422 and PHOTO[1000:1100] not in truncated.content


def test_django_view() -> None:
    import django

    import django_view

    django.setup()
    from django.test import Client

    client = Client()
    ok = client.post("/photos", {"photo": io.BytesIO(PHOTO)})
    assert ok.status_code == 200, ok.content[:200]
    assert ok["Content-Type"] == "image/jpeg" and int(ok["X-Regions-Redacted"]) >= 1
    assert ok.content[:2] == b"\xff\xd8" and ok.content != PHOTO
    bad = client.post("/photos", {"photo": io.BytesIO(NOT_A_PHOTO)})
    assert bad.status_code == 422 and b"carol-unique-upload" not in bad.content
    assert client.post("/photos", {}).status_code == 400
    assert client.get("/photos").status_code == 405
    assert django_view.anonymizer.models
