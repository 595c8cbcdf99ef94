"""The shared evaluation photos and their face boxes, for the tests."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVAL = Path(os.environ.get("OBSCURA_EVAL_DIR", ROOT.parent / "shared" / "eval"))


def must_cover_faces() -> dict[str, list[tuple[int, int, int, int]]]:
    """Faces the default setting must cover (WIDER "easy", at least 48 px tall), by photo:
    the first 10 photos that have some, in the order of the annotation file."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    with open(EVAL / "faces_wider_attributes.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["official_eval_subset"] == "easy" and int(row["h"]) >= 48 and row["invalid"] == "0":
                boxes[row["image"]].append((int(row["x"]), int(row["y"]), int(row["w"]), int(row["h"])))
    return dict(list(boxes.items())[:10])


def photo(name: str) -> bytes:
    return (EVAL / "images" / name).read_bytes()


def decode(data: bytes):
    """RGB pixels of an encoded image, as a numpy array (Pillow decodes)."""
    import numpy
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return numpy.asarray(image.convert("RGB"))
