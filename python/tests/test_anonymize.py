"""Anonymisation through the Python API on the real models and shared photos: faces
redacted where the ground truth says they are, in every entry point (bytes, files,
arrays, asyncio), and nothing but pixels in the output."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import struct

import numpy
import pytest
from PIL import Image

import obscura
from photos import ROOT, decode, must_cover_faces, photo


def redacted_share(regions: list[obscura.Region], box: tuple[int, int, int, int], shape) -> float:
    """The share of `box` inside some redacted region (as `obscura eval` scores coverage)."""
    mask = numpy.zeros(shape[:2], dtype=bool)
    for r in regions:
        mask[r.y : r.y + r.height, r.x : r.x + r.width] = True
    x, y, w, h = box
    return float(mask[y : y + h, x : x + w].mean())


@pytest.mark.parametrize("name", list(must_cover_faces()))
def test_faces_are_redacted_at_their_ground_truth_boxes(anonymizer: obscura.Anonymizer, name: str) -> None:
    data = photo(name)
    result = anonymizer.anonymize(data)
    assert result.format == "jpeg" and result.data[:3] == b"\xff\xd8\xff"
    before, after = decode(data), decode(result.data)
    assert before.shape == after.shape
    for box in must_cover_faces()[name]:
        assert redacted_share(result.regions, box, before.shape) >= 0.8, (box, result.regions)
        x, y, w, h = box
        # The pixels there really changed (not only the report says so): pixelation with
        # noise moves every pixel of a face far more than re-encoding does.
        changed = numpy.abs(before[y : y + h, x : x + w].astype(int) - after[y : y + h, x : x + w].astype(int)).mean()
        assert changed > 8, (box, changed)
    # Outside every region the photo is the photo (re-encoding noise only).
    mask = numpy.ones(before.shape[:2], dtype=bool)
    for r in result.regions:
        mask[max(r.y - 8, 0) : r.y + r.height + 8, max(r.x - 8, 0) : r.x + r.width + 8] = False
    if mask.any():
        assert numpy.abs(before[mask].astype(int) - after[mask].astype(int)).mean() < 4
    assert result.report["regions"] and {r.kind for r in result.regions} <= {"face", "person"}


def jpeg_segments(data: bytes) -> list[int]:
    """The marker of every segment before the image data."""
    assert data[:2] == b"\xff\xd8"
    markers, i = [], 2
    while i < len(data):
        assert data[i] == 0xFF, f"not a marker at {i}"
        marker = data[i + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return markers
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    raise AssertionError("no start of scan")


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        chunks.append(data[i + 4 : i + 8])
        i += 12 + length
    return chunks


SECRET = "GPS-48.8583N-2.2945E-owner-carol"


def photo_with_metadata(fmt: str) -> bytes:
    """A shared photo re-saved by Pillow with EXIF (GPS, owner), an ICC profile, XMP and a
    comment or text chunk, each carrying SECRET."""
    image = Image.open(io.BytesIO(photo(next(iter(must_cover_faces())))))
    exif = Image.Exif()
    exif[0x013B] = SECRET  # Artist
    exif[0x010E] = SECRET  # ImageDescription
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.9)}  # GPS
    icc = b"\x00" * 128 + SECRET.encode()  # an ICC blob that can hold anything
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", exif=exif, icc_profile=icc, comment=SECRET.encode(), xmp=f"<x:xmpmeta>{SECRET}</x:xmpmeta>".encode())
    elif fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", SECRET)
        info.add_itxt("XML:com.adobe.xmp", SECRET)
        image.save(out, "PNG", pnginfo=info, exif=exif, icc_profile=icc)
    elif fmt == "webp":
        image.save(out, "WEBP", exif=exif, icc_profile=icc, xmp=SECRET.encode())
    elif fmt == "gif":
        image.save(out, "GIF", comment=SECRET.encode(), xmp=SECRET.encode())
    else:
        # Pillow writes a TIFF's EXIF tags into its main directory (no nested GPS there).
        tags = Image.Exif()
        tags[0x013B] = SECRET  # Artist
        image.save(out, "TIFF", exif=tags, icc_profile=icc, description=SECRET, compression="tiff_lzw")
    data = out.getvalue()
    assert SECRET.encode() in data
    return data


def gif_extensions(data: bytes) -> list[int]:
    """The label of every extension block of a GIF (0xF9 graphic control, 0xFE comment,
    0xFF application: XMP, ICC, looping)."""
    table = lambda flags: 3 << ((flags & 7) + 1) if flags & 0x80 else 0  # noqa: E731

    def skip(i: int) -> int:
        while data[i]:
            i += 1 + data[i]
        return i + 1

    labels, i = [], 13 + table(data[10])
    while data[i] != 0x3B:
        if data[i] == 0x21:
            labels.append(data[i + 1])
            i = skip(i + 2)
        else:
            assert data[i] == 0x2C, f"unknown block {data[i]:#x}"
            i = skip(i + 11 + table(data[i + 9]))
    return labels


def gif_images(data: bytes) -> int:
    """How many images (image descriptors) a GIF holds."""
    table = lambda flags: 3 << ((flags & 7) + 1) if flags & 0x80 else 0  # noqa: E731
    count, i = 0, 13 + table(data[10])
    while data[i] != 0x3B:
        if data[i] == 0x2C:
            count += 1
            i += 11 + table(data[i + 9])
        else:
            i += 2
        while data[i]:
            i += 1 + data[i]
        i += 1
    return count


def riff_chunks(data: bytes) -> list[bytes]:
    """The kinds of a WebP's top-level chunks, in order."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    chunks, i = [], 12
    while i + 8 <= len(data):
        (length,) = struct.unpack("<I", data[i + 4 : i + 8])
        chunks.append(data[i : i + 4])
        i += 8 + length + (length & 1)
    return chunks


# TIFF tags that describe the pixels and nothing else.
TIFF_BASELINE = {256, 257, 258, 259, 262, 273, 277, 278, 279, 282, 283, 284, 296, 317, 338, 339}


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "tiff"])
def test_the_output_carries_no_metadata(anonymizer: obscura.Anonymizer, fmt: str) -> None:
    data = photo_with_metadata(fmt)
    result = anonymizer.anonymize(data)
    assert result.format == fmt
    assert SECRET.encode() not in result.data
    # The face is redacted at its ground-truth box in this format too (the pixels, not
    # only the report).
    before, after = decode(data), decode(result.data)
    for x, y, w, h in next(iter(must_cover_faces().values())):
        changed = numpy.abs(before[y : y + h, x : x + w].astype(int) - after[y : y + h, x : x + w].astype(int)).mean()
        assert changed > 8, (fmt, (x, y, w, h), changed)
    if fmt == "jpeg":
        # No APPn but the JFIF header, no comment: no EXIF, XMP, ICC, IPTC or MPF.
        markers = jpeg_segments(result.data)
        assert not [m for m in markers if 0xE1 <= m <= 0xEF or m == 0xFE], [hex(m) for m in markers]
    elif fmt == "png":
        assert set(png_chunks(result.data)) <= {b"IHDR", b"PLTE", b"IDAT", b"IEND"}, png_chunks(result.data)
    elif fmt == "webp":
        assert set(riff_chunks(result.data)) <= {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}, riff_chunks(result.data)
    elif fmt == "gif":
        assert set(gif_extensions(result.data)) <= {0xF9}, gif_extensions(result.data)
        assert gif_images(result.data) == 1
    with Image.open(io.BytesIO(result.data)) as image:
        if fmt == "tiff":
            # One page, and only the tags that describe its pixels.
            assert set(image.tag_v2) <= TIFF_BASELINE, sorted(image.tag_v2)
            assert getattr(image, "n_frames", 1) == 1
        else:
            assert not image.getexif()
        assert "icc_profile" not in image.info


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_gif_and_tiff_faces_are_redacted_in_their_own_format(anonymizer: obscura.Anonymizer, fmt: str) -> None:
    name = next(iter(must_cover_faces()))
    out = io.BytesIO()
    Image.open(io.BytesIO(photo(name))).save(out, fmt)
    result = anonymizer.anonymize(out.getvalue())
    assert result.format == fmt.lower()
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.format == fmt
    for box in must_cover_faces()[name]:
        assert redacted_share(result.regions, box, decode(result.data).shape) >= 0.8, (box, result.regions)
    # Several pictures in one file: each one redacted, none dropped.
    frames = io.BytesIO()
    first = Image.open(io.BytesIO(photo(name))).convert("RGB")
    second = first.copy()  # (the same picture would be merged into one frame by Pillow)
    second.paste((255, 0, 0), (0, 0, 8, 8))
    first.save(frames, fmt, save_all=True, append_images=[second])
    result = anonymizer.anonymize(frames.getvalue())
    assert len(result.report["frames"]) == 2
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.n_frames == 2
        for i in range(2):
            image.seek(i)
            changed = numpy.abs(numpy.asarray(image.convert("RGB"), dtype=int) - numpy.asarray(first, dtype=int))
            for x, y, w, h in must_cover_faces()[name]:
                assert changed[y : y + h, x : x + w].mean() > 15, (fmt, i, (x, y, w, h))


# The face in each frame of tests/fixtures/moving-face.* and page of pages.tif
# (tests/fixtures/make_animations.py).
MOVING_FACE = [(40, 60, 62, 75), (125, 70, 62, 75), (210, 60, 62, 75)]


@pytest.mark.parametrize("name", ["moving-face.gif", "moving-face.png", "moving-face.webp", "pages.tif"])
def test_every_frame_of_an_animation_is_redacted_and_nothing_else_is_kept(name: str) -> None:
    data = (ROOT / "tests" / "fixtures" / name).read_bytes()
    assert b"SECRET" in data
    faces = obscura.Anonymizer(detect={"targets": ["face"]})
    result = faces.anonymize(data)
    assert result.format == {"gif": "gif", "png": "png", "webp": "webp", "tif": "tiff"}[name.rsplit(".", 1)[1]]
    # An animation's frames also take their neighbours' regions; a TIFF's pages do not.
    per_frame = [1, 1, 1] if name.endswith(".tif") else [2, 3, 2]
    assert len(result.regions) == sum(per_frame) and [len(f["regions"]) for f in result.report["frames"]] == per_frame
    for secret in (b"SECRET", b"Exif", b"XMP", b"eXIf", b"tEXt"):
        assert secret not in result.data, secret
    # Nothing but the three pictures and their timing, the file's structure parsed.
    if result.format == "gif":
        assert gif_images(result.data) == 3
        labels = gif_extensions(result.data)
        assert set(labels) <= {0xF9, 0xFF} and labels.count(0xFF) == 1 and b"NETSCAPE2.0" in result.data, labels
    elif result.format == "png":
        chunks = [c for i, c in enumerate(png_chunks(result.data)) if i == 0 or c != png_chunks(result.data)[i - 1]]
        assert chunks == [b"IHDR", b"acTL", b"fcTL", b"IDAT", b"fcTL", b"fdAT", b"fcTL", b"fdAT", b"IEND"], chunks
    elif result.format == "webp":
        assert riff_chunks(result.data) == [b"VP8X", b"ANIM", b"ANMF", b"ANMF", b"ANMF"], riff_chunks(result.data)
    with Image.open(io.BytesIO(data)) as before, Image.open(io.BytesIO(result.data)) as after:
        assert after.n_frames == before.n_frames == 3
        if not name.endswith(".tif"):
            assert after.info.get("loop") == 0
        for i, (x, y, w, h) in enumerate(MOVING_FACE):
            before.seek(i)
            after.seek(i)
            if name.endswith(".tif"):
                assert set(after.tag_v2) <= TIFF_BASELINE, (i, sorted(after.tag_v2))
            b = numpy.asarray(before.convert("RGB"), dtype=int)
            a = numpy.asarray(after.convert("RGB"), dtype=int)
            assert numpy.abs(a - b)[y : y + h, x : x + w].mean() > 15, (name, i)
    # One picture is not an animation's format; past the frame limit the file is refused.
    with pytest.raises(obscura.ConfigError, match="holds one picture|cannot hold"):
        faces.anonymize(data, format="jpeg")
    with pytest.raises(obscura.ImageTooLarge, match="more than 2"):
        obscura.Anonymizer(detect={"targets": ["face"]}, image={"max_frames": 2}).anonymize(data)


# The letters of each text in tests/fixtures/text-scene.jpg (x, y, w, h), as
# tests/fixtures/make_text.py rendered them (tests/common TEXT_BOXES).
TEXT_BOXES = {
    "badge-heading": (684, 44, 188, 19),
    "badge-name": (684, 94, 226, 31),
    "id-title": (680, 219, 190, 16),
    "id-number": (680, 318, 236, 20),
    "plate": (705, 441, 225, 61),
}


def text_share(report: dict, box: tuple[int, int, int, int]) -> float:
    """The share of `box` under the report's text detections."""
    x, y, w, h = box
    mask = numpy.zeros((y + h, x + w), dtype=bool)
    for d in report["detections"]:
        if d["class"] == "text":
            b = d["bbox"]
            mask[max(int(b["y1"]), 0) : int(numpy.ceil(b["y2"])), max(int(b["x1"]), 0) : int(numpy.ceil(b["x2"]))] = True
    return float(mask[y : y + h, x : x + w].mean())


@pytest.mark.parametrize("style", ["fill", "pixelate"])
def test_text_is_redacted_at_its_boxes_and_the_detector_finds_none_there_afterwards(style: str) -> None:
    data = (ROOT / "tests" / "fixtures" / "text-scene.jpg").read_bytes()
    reader = obscura.Anonymizer(detect={"targets": ["text"]})
    found = reader.anonymize(data, format="png").report
    assert all(text_share(found, box) > 0.9 for box in TEXT_BOXES.values()), found["detections"]
    result = obscura.Anonymizer(detect={"targets": ["face", "text"]}, redact={"text_style": style}).anonymize(data, format="png")
    assert {r.kind for r in result.regions} == {"face", "text"}
    before, after = decode(data), decode(result.data)
    for name, (x, y, w, h) in TEXT_BOXES.items():
        assert redacted_share([r for r in result.regions if r.kind == "text"], (x, y, w, h), before.shape) == 1.0, name
        changed = numpy.abs(before[y : y + h, x : x + w].astype(int) - after[y : y + h, x : x + w].astype(int)).mean()
        assert changed > 20, (name, changed)
    again = reader.anonymize(result.data, format="png").report
    assert all(text_share(again, box) == 0.0 for box in TEXT_BOXES.values()), again["detections"]


def test_another_output_format_can_be_asked_for(anonymizer: obscura.Anonymizer) -> None:
    result = anonymizer.anonymize(photo(next(iter(must_cover_faces()))), format="png")
    assert result.format == "png" and result.data[:4] == b"\x89PNG"


def test_a_file_is_written_atomically_and_the_source_is_never_overwritten(anonymizer: obscura.Anonymizer, tmp_path) -> None:
    name = next(iter(must_cover_faces()))
    src = tmp_path / "in.jpg"
    src.write_bytes(photo(name))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    report = anonymizer.anonymize_file(src, tmp_path / "out.webp")
    assert report["format"] == "webp" and report["regions"]
    assert (tmp_path / "out.webp").read_bytes()[8:12] == b"WEBP"

    for dst in (src, tmp_path / "." / "in.jpg"):
        with pytest.raises(FileExistsError, match="source"):
            anonymizer.anonymize_file(src, dst)
    (tmp_path / "link.jpg").symlink_to(src)
    os.link(src, tmp_path / "hard.jpg")
    for dst in (tmp_path / "link.jpg", tmp_path / "hard.jpg"):
        with pytest.raises(FileExistsError):
            anonymizer.anonymize_file(src, dst)
    with pytest.raises(obscura.ConfigError, match="bmp"):
        anonymizer.anonymize_file(src, tmp_path / "out.bmp")
    with pytest.raises(FileNotFoundError):
        anonymizer.anonymize_file(tmp_path / "missing.jpg", tmp_path / "x.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(obscura.NotAnImage):
        anonymizer.anonymize_file(tmp_path / "bad.jpg", tmp_path / "bad.out.jpg")

    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "out.gif").exists() and not (tmp_path / "x.jpg").exists() and not (tmp_path / "bad.out.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "hard.jpg", "in.jpg", "link.jpg", "out.webp"]


def test_arrays_from_pillow_are_anonymised(anonymizer: obscura.Anonymizer) -> None:
    name, boxes = next(iter(must_cover_faces().items()))
    pixels = decode(photo(name))
    original = pixels.copy()
    out, regions, report = anonymizer.anonymize_array_with_report(pixels)
    assert out.shape == pixels.shape and out.dtype == numpy.uint8
    assert numpy.array_equal(pixels, original), "the input array is not changed"
    for box in boxes:
        assert redacted_share(regions, box, pixels.shape) >= 0.8
        x, y, w, h = box
        assert numpy.abs(out[y : y + h, x : x + w].astype(int) - original[y : y + h, x : x + w].astype(int)).mean() > 8
    assert report["width"] == pixels.shape[1] and report["height"] == pixels.shape[0]

    # RGBA: same faces, alpha kept outside the regions; a non-contiguous view works too.
    rgba = numpy.dstack([pixels, numpy.full(pixels.shape[:2], 200, dtype=numpy.uint8)])
    out4 = anonymizer.anonymize_array(rgba)
    assert out4.shape == rgba.shape and out4[0, 0, 3] in (200, 255)
    flipped = anonymizer.anonymize_array(pixels[:, ::-1])
    assert flipped.shape == pixels.shape


@pytest.mark.parametrize(
    "array, message",
    [
        (numpy.zeros((64, 64, 3), dtype=numpy.float32), "uint8"),
        (numpy.zeros((64, 64), dtype=numpy.uint8), "H×W×3"),
        (numpy.zeros((64, 64, 2), dtype=numpy.uint8), "H×W×3"),
        (numpy.zeros((0, 64, 3), dtype=numpy.uint8), "0×64×3"),
    ],
)
def test_arrays_that_are_not_images_are_refused(anonymizer: obscura.Anonymizer, array, message: str) -> None:
    with pytest.raises(obscura.ConfigError, match=message):
        anonymizer.anonymize_array(array)


def test_arrays_over_the_limits_are_refused_before_they_are_copied(anonymizer: obscura.Anonymizer) -> None:
    # Three bytes standing for 1.2 GB: refused from the shape, not after copying it.
    huge = numpy.broadcast_to(numpy.zeros(3, dtype=numpy.uint8), (20_000, 20_000, 3))
    with pytest.raises(obscura.ImageTooLarge, match="20000×20000"):
        anonymizer.anonymize_array(huge)


def test_only_regular_files_are_read_and_replaced(anonymizer: obscura.Anonymizer, tmp_path) -> None:
    src = tmp_path / "in.jpg"
    src.write_bytes(photo(next(iter(must_cover_faces()))))
    with pytest.raises(OSError, match="not a regular file"):
        anonymizer.anonymize_file("/dev/zero", tmp_path / "zero.jpg")
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(b"kept")
    (tmp_path / "link.jpg").symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic link"):
        anonymizer.anonymize_file(src, tmp_path / "link.jpg")
    assert (tmp_path / "link.jpg").is_symlink() and elsewhere.read_bytes() == b"kept"
    assert not (tmp_path / "zero.jpg").exists()


def test_asyncio_callers_share_one_anonymizer_and_the_loop_keeps_running(anonymizer: obscura.Anonymizer) -> None:
    names = list(must_cover_faces())[:6]

    async def main() -> tuple[list[obscura.Result], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(anonymizer.anonymize_async(photo(n)) for n in names))
        with pytest.raises(obscura.NotAnImage):
            await anonymizer.anonymize_async(b"")
        task.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert ticks > 0, "the event loop was blocked while images were processed"
    for name, result in zip(names, results):
        for box in must_cover_faces()[name]:
            assert redacted_share(result.regions, box, decode(photo(name)).shape) >= 0.8


def test_png_with_alpha_round_trips(anonymizer: obscura.Anonymizer) -> None:
    image = Image.open(io.BytesIO(photo(next(iter(must_cover_faces()))))).convert("RGBA")
    out = io.BytesIO()
    image.save(out, "PNG")
    result = anonymizer.anonymize(out.getvalue())
    with Image.open(io.BytesIO(result.data)) as back:
        assert back.mode == "RGBA" and back.size == image.size


# The face in tests/fixtures/astronaut.{heic,avif} (384x384, tests/fixtures/make_heif.py).
ASTRONAUT_FACE = (140, 55, 62, 75)
FIXTURES = ROOT / "tests" / "fixtures"


def jpeg_markers(data: bytes) -> list[int]:
    """A JPEG's segment markers up to its first scan."""
    markers, i = [], 2
    while data[i] == 0xFF and data[i + 1] != 0xDA:
        markers.append(data[i + 1])
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return markers


@pytest.mark.parametrize("name", ["astronaut.heic", "astronaut.avif"])
def test_heic_and_avif_come_out_as_jpeg_with_the_face_redacted_and_nothing_else(anonymizer: obscura.Anonymizer, name: str, tmp_path) -> None:
    data = (FIXTURES / name).read_bytes()
    # The input carries EXIF (GPS), XMP, a thumbnail and an alpha image.
    assert b"SECRET-XMP" in data and b"SECRET-ARTIST" in data
    result = anonymizer.anonymize(data)
    assert result.format == "jpeg" and result.data[:3] == b"\xff\xd8\xff"
    assert redacted_share(result.regions, ASTRONAUT_FACE, (384, 384)) >= 0.8, result.regions
    # The pixels, against the picture the fixture was coded from (tests/fixtures/
    # make_heif.py: progressive.jpg scaled to 384x384): the face changed far more than
    # the HEVC/AV1 and JPEG coding changes a corner.
    with Image.open(FIXTURES / "progressive.jpg") as source:
        before = numpy.asarray(source.convert("RGB").resize((384, 384), Image.LANCZOS), dtype=int)
    after = decode(result.data).astype(int)
    x, y, w, h = ASTRONAUT_FACE
    face, corner = numpy.abs(after - before)[y : y + h, x : x + w].mean(), numpy.abs(after - before)[300:380, 300:380].mean()
    assert face > 15 and corner < 8, (face, corner)
    # One picture and no metadata: only JFIF, tables, frame, scan; no second image.
    assert set(jpeg_markers(result.data)) <= {0xE0, 0xDB, 0xC4, 0xC0}, jpeg_markers(result.data)
    assert result.data.count(b"\xff\xd8\xff") == 1 and b"SECRET" not in result.data
    # The library that read it is the one the package ships (when it ships one).
    maps = open("/proc/self/maps").read()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libheif" in line}
    assert loaded, "libheif is loaded"
    # And its decoders (HEVC: libde265; AV1: dav1d or aom) from the same place.
    decoders = {line.split()[-1] for line in maps.splitlines() if any(n in line for n in ("libde265", "libdav1d", "libaom"))}
    assert decoders, "an HEVC or AV1 decoder is loaded"
    loaded |= decoders
    if obscura.LIBHEIF.is_file():
        assert all(os.path.realpath(p).startswith(str(obscura.LIBHEIF.parent)) for p in loaded), loaded
        # No GPL code shipped: the x265 encoder libheif links is the package's empty
        # stand-in (packaging/x265-absent.c), and has no licence file beside the others.
        x265 = list(obscura.LIBHEIF.parent.glob("libx265.so.*"))
        assert x265 and all(p.stat().st_size < 64 * 1024 and b"x265_encoder_open" not in p.read_bytes() for p in x265), x265
        assert not list((obscura.LIBHEIF.parent / "licences").glob("*x265*"))
    # Files: the output format follows the name; HEIC and AVIF are not written.
    src = tmp_path / name
    src.write_bytes(data)
    report = anonymizer.anonymize_file(src, tmp_path / "out.png")
    assert report["format"] == "png" and (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    for ext in ("heic", "avif"):
        with pytest.raises(obscura.ConfigError, match="not a format Obscura writes"):
            anonymizer.anonymize_file(src, tmp_path / f"out.{ext}")
        with pytest.raises(obscura.ConfigError, match="invalid format"):
            anonymizer.anonymize(data, format=ext)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.png"])


@pytest.mark.parametrize("name", ["astronaut-rotated.heic", "astronaut-grid.heic"])
def test_heics_as_phones_write_them_are_redacted_where_the_face_is_shown(anonymizer: obscura.Anonymizer, name: str) -> None:
    # tests/fixtures/make_heif.py: the coded picture turned a quarter with an `irot`
    # property turning it back for display, or coded as a 2x2 grid of tiles.
    result = anonymizer.anonymize((FIXTURES / name).read_bytes())
    assert redacted_share(result.regions, ASTRONAUT_FACE, (384, 384)) >= 0.8, result.regions
    with Image.open(FIXTURES / "progressive.jpg") as source:
        before = numpy.asarray(source.convert("RGB").resize((384, 384), Image.LANCZOS), dtype=int)
    change = numpy.abs(decode(result.data).astype(int) - before)
    x, y, w, h = ASTRONAUT_FACE
    assert change[y : y + h, x : x + w].mean() > 15 and change[300:380, 300:380].mean() < 8, "written upright, the face redacted"


def test_bad_heif_files_are_refused_naming_their_format(anonymizer: obscura.Anonymizer) -> None:
    for name, fmt in (("astronaut.heic", "HEIC"), ("astronaut.avif", "AVIF")):
        data = (FIXTURES / name).read_bytes()
        for cut in (200, len(data) // 2, len(data) - 1):
            with pytest.raises(obscura.CorruptImage, match=f"corrupt or truncated {fmt} image"):
                anonymizer.anonymize(data[:cut])
    with pytest.raises(obscura.UnsupportedImage, match="HEIC holding several images"):
        anonymizer.anonymize((FIXTURES / "two-images.heic").read_bytes())
