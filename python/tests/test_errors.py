"""Fail closed: every bad input, setting or set-up raises its own `obscura.Error`
subclass, with a message that says what is wrong, and never returns image bytes."""

from __future__ import annotations

import shutil
import struct
import zlib

import pytest

import obscura
from photos import ROOT, photo, must_cover_faces


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png(width: int, height: int, extra: bytes = b"", frames: int = 1) -> bytes:
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    row = b"\x00" + b"\x80" * (3 * width)
    idat = png_chunk(b"IDAT", zlib.compress(row * height))
    if frames == 1:
        return b"\x89PNG\r\n\x1a\n" + ihdr + extra + idat + png_chunk(b"IEND", b"")
    # APNG: acTL before IDAT, an fcTL per frame, the later frames in fdAT chunks.
    def fctl(seq: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, 1, 10, 0, 0))

    body = png_chunk(b"acTL", struct.pack(">II", frames, 0)) + fctl(0) + idat
    body += fctl(1) + png_chunk(b"fdAT", struct.pack(">I", 2) + zlib.compress(row * height))
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + png_chunk(b"IEND", b"")


def jpeg() -> bytes:
    return photo(next(iter(must_cover_faces())))


BAD_INPUTS = [
    ("empty", b"", obscura.NotAnImage, "empty"),
    ("text", b"name,email\ncarol,carol@example.org\n", obscura.NotAnImage, "not a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF"),
    ("bmp", b"BM" + b"\x00" * 64, obscura.NotAnImage, "not a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF"),
    ("broken gif", b"GIF89a" + b"\x00" * 64, obscura.CorruptImage, "GIF"),
    ("truncated jpeg", None, obscura.CorruptImage, "truncated"),
    # Cut, then given a new end-of-image marker (decoders fill the rest in): refused.
    ("cut jpeg with a new end marker", "cut", obscura.CorruptImage, "cut short"),
    ("truncated png", png(64, 64)[:-40], obscura.CorruptImage, "PNG"),
    ("huge png header", png_header(100_000, 100_000) + png_chunk(b"IDAT", b"x"), obscura.ImageTooLarge, "100000×100000"),
    # An animation cut in its second frame: the whole file is refused, not its first frame kept.
    ("cut animated png", png(32, 32, frames=2)[:-30], obscura.CorruptImage, "PNG"),
    # A valid arithmetic-coded JPEG (jpegtran -arithmetic): unsupported, not corrupt.
    ("arithmetic jpeg", (ROOT / "tests" / "fixtures" / "arithmetic.jpg").read_bytes(), obscura.UnsupportedImage, "arithmetic-coded JPEG is not supported"),
]


@pytest.mark.parametrize("label, data, error, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_raises_its_own_error(anonymizer: obscura.Anonymizer, label: str, data, error, message: str) -> None:
    if data is None:
        whole = jpeg()
        data = whole[: len(whole) // 2]
    elif data == "cut":
        whole = jpeg()
        data = whole[: len(whole) * 2 // 3] + b"\xff\xd9"
    with pytest.raises(error, match=message) as caught:
        anonymizer.anonymize(data)
    assert isinstance(caught.value, obscura.InvalidImage)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, obscura.Error)


def still(fmt: str) -> bytes:
    """A shared photo saved by Pillow as `fmt`, at half size."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(jpeg())).convert("RGB")
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2)).save(out, fmt)
    return out.getvalue()


FIXTURES = ROOT / "tests" / "fixtures"
CUT_FILES = [
    ("JPEG", jpeg),
    ("PNG", lambda: still("PNG")),
    ("WebP", lambda: still("WEBP")),
    ("GIF", lambda: still("GIF")),
    ("TIFF", lambda: still("TIFF")),
    ("GIF", lambda: (FIXTURES / "moving-face.gif").read_bytes()),
    ("PNG", lambda: (FIXTURES / "moving-face.png").read_bytes()),
    ("WebP", lambda: (FIXTURES / "moving-face.webp").read_bytes()),
    ("TIFF", lambda: (FIXTURES / "pages.tif").read_bytes()),
    ("HEIC", lambda: (FIXTURES / "astronaut.heic").read_bytes()),
    ("AVIF", lambda: (FIXTURES / "astronaut.avif").read_bytes()),
]


@pytest.mark.parametrize("fmt, make", CUT_FILES, ids=["jpeg", "png", "webp", "gif", "tiff", "animated-gif", "apng", "animated-webp", "tiff-pages", "heic", "avif"])
def test_a_cut_file_of_each_format_is_refused_naming_its_format(anonymizer: obscura.Anonymizer, fmt: str, make) -> None:
    # Cut in half, and cut near the end (an animation: in its last frame or the
    # metadata after it, which a decoder that stops at the last frame would not notice).
    whole = make()
    for cut in (len(whole) // 2, len(whole) - 100):
        with pytest.raises(obscura.CorruptImage, match=f"corrupt or truncated {fmt} image"):
            anonymizer.anonymize(whole[:cut])


def test_a_good_image_after_bad_ones_still_works(anonymizer: obscura.Anonymizer) -> None:
    for data in (b"", b"junk", jpeg()[:1000]):
        with pytest.raises(obscura.InvalidImage):
            anonymizer.anonymize(data)
    assert anonymizer.anonymize(jpeg()).regions


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"detect": {"threshold": 1.5}}, "detect.threshold"),
        ({"detect": {"threshhold": 0.2}}, "unknown field `threshhold`"),
        ({"detect": {"targets": []}}, "detect.targets"),
        ({"detect": {"targets": ["face"], "face_models": []}}, "detect.face_models"),
        ({"redact": {"style": "swirl"}}, "not a style"),
        ({"redact": {"padding": -1}}, "redact.padding"),
        ({"image": {"jpeg_quality": 0}}, "jpeg_quality"),
        ({"colour": "red"}, "unknown field `colour`"),
        ({"detect": {"model": object()}}, "invalid settings"),
        ({"detect": {"threshold": b"0.3"}}, "invalid settings"),
        ({"runtime": "cpu"}, "runtime must be a dict"),
        ({"detect": 5}, "detect must be a dict"),
    ],
)
def test_invalid_settings_raise_at_construction(settings: dict, message: str) -> None:
    with pytest.raises(obscura.ConfigError, match=message):
        obscura.Anonymizer(**settings)


def test_an_invalid_per_call_format_is_refused(anonymizer: obscura.Anonymizer) -> None:
    with pytest.raises(obscura.ConfigError, match="bmp"):
        anonymizer.anonymize(jpeg(), format="bmp")  # type: ignore[arg-type]


def test_settings_by_name_are_the_cli_s(anonymizer: obscura.Anonymizer) -> None:
    fill = obscura.Anonymizer(detect={"targets": ["face"]}, redact={"style": "fill", "shape": "ellipse"})
    assert fill.config["redact"]["style"] == {"kind": "fill", "color": [0, 0, 0]}
    assert fill.config["redact"]["shape"] == "ellipse"
    assert [m["name"] for m in fill.models] == ["centerface-int8"]
    result = fill.anonymize(jpeg())
    assert result.regions and {r.kind for r in result.regions} == {"face"}


def test_a_missing_or_altered_model_is_a_setup_error(tmp_path) -> None:
    with pytest.raises(obscura.SetupError, match="not found"):
        obscura.Anonymizer(runtime={"models_dir": tmp_path})
    for model in obscura.MODELS_DIR.glob("*.onnx"):
        shutil.copy(model, tmp_path / model.name)
    with (tmp_path / "centerface-int8.onnx").open("r+b") as f:
        f.seek(5000)
        f.write(b"\x00" * 16)
    with pytest.raises(obscura.SetupError, match="sha256"):
        obscura.Anonymizer(runtime={"models_dir": tmp_path})
    assert isinstance(obscura.SetupError("x"), RuntimeError)


def test_a_model_that_answers_wrongly_fails_the_image_not_passes_it(tmp_path) -> None:
    # RetinaFace's file given as CenterFace's: it loads, but its outputs are not
    # CenterFace's, so every image fails, and none comes back unredacted.
    wrong = obscura.Anonymizer(detect={"targets": ["face"], "model": obscura.MODELS_DIR / "retinaface.onnx"})
    with pytest.raises(obscura.ProcessingError) as caught:
        wrong.anonymize(jpeg())
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, obscura.Error)


def test_only_bytes_like_input_is_taken(anonymizer: obscura.Anonymizer) -> None:
    # An int would make bytes(n) allocate n zero bytes; a str has no encoding to assume.
    for wrong in (10**12, "photo.jpg", None, [0xFF, 0xD8]):
        with pytest.raises(TypeError, match="bytes"):
            anonymizer.anonymize(wrong)  # type: ignore[arg-type]
    assert anonymizer.anonymize(bytearray(jpeg())).regions
    assert anonymizer.anonymize(memoryview(jpeg())).regions


def test_settings_that_cannot_be_read_raise_config_errors() -> None:
    looped: dict = {}
    looped["self"] = looped
    deep: dict = {}
    for _ in range(5000):
        deep = {"x": deep}
    for settings in ({"detect": looped}, {"detect": deep}):
        with pytest.raises(obscura.ConfigError):
            obscura.Anonymizer(**settings)
