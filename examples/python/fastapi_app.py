"""A FastAPI upload endpoint that stores only anonymised photos.

    pip install obscura fastapi python-multipart uvicorn
    uvicorn fastapi_app:app

POST a photo as the multipart field "photo" to /photos. The anonymised image comes back
(in a real service it would be stored first); a file that is not an image gets a 422
with the reason; any other failure a 500. The upload itself is never stored or echoed:
Obscura raises instead of returning it, and the handler has nothing else to send.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import Response

import obscura

MAX_UPLOAD = 32 * 1024 * 1024

app = FastAPI()
# Built once at start-up: it loads ONNX Runtime and the models. Thread-safe.
anonymizer = obscura.Anonymizer()


@app.post("/photos")
async def upload_photo(photo: UploadFile) -> Response:
    data = await photo.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, "the photo is larger than 32 MiB")
    try:
        result = await anonymizer.anonymize_async(data)  # the event loop keeps serving
    except obscura.InvalidImage as e:
        raise HTTPException(422, f"not a photo Obscura can anonymise: {e}") from None
    except obscura.Error:
        raise HTTPException(500, "the photo could not be anonymised") from None
    # store(result.data) ...
    return Response(
        result.data,
        media_type=f"image/{result.format}",
        headers={"X-Regions-Redacted": str(len(result.regions))},
    )
