"""Throughput of the Python package, or of deface 1.5.0's Python API, on the same photos
as `examples/library_bench.rs` (scripts/bench-python runs all three side by side).

    python benches/python_api.py obscura|obscura-faces|deface-onnxrt|deface-opencv --photos DIR
        [--threads N] [--rounds R] [--limit-photos N]

Every photo is read into memory first; then `--threads` threads take photos one after
another (`--rounds` passes) and turn bytes into anonymised JPEG bytes, nothing written:
- obscura: one shared `obscura.Anonymizer()` (default: faces and persons), or with
  `detect={"targets": ["face"]}` (obscura-faces);
- deface: what its image path does (deface.deface.image_detect) minus the file I/O:
  decode (imageio), CenterFace at threshold 0.2, anonymize_frame with its defaults
  (blur, ellipse, mask scale 1.3), encode JPEG (imageio); one CenterFace per thread,
  on the backend named.
Prints one JSON line: tool, threads, images, seconds, images_per_s.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def obscura_worker(faces_only: bool):
    import obscura

    settings = {"detect": {"targets": ["face"]}} if faces_only else {}
    anonymizer = obscura.Anonymizer(**settings)
    return lambda data: len(anonymizer.anonymize(data).data)


def deface_worker(backend: str):
    import io

    import imageio.v2 as imageio
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    local = threading.local()

    def run(data: bytes) -> int:
        if not hasattr(local, "centerface"):
            local.centerface = CenterFace(backend=backend)
        frame = imageio.imread(data)
        dets, _ = local.centerface(frame, threshold=0.2)
        anonymize_frame(dets, frame, mask_scale=1.3, replacewith="blur", ellipse=True, draw_scores=False, replaceimg=None, mosaicsize=20)
        out = io.BytesIO()
        imageio.imwrite(out, frame, format="jpg")
        return len(out.getvalue())

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["obscura", "obscura-faces", "deface-onnxrt", "deface-opencv"])
    parser.add_argument("--photos", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit-photos", type=int, default=None)
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))[: args.limit_photos]]
    if args.tool.startswith("obscura"):
        work = obscura_worker(args.tool == "obscura-faces")
    else:
        work = deface_worker(args.tool.removeprefix("deface-"))
    jobs = photos * args.rounds
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        sizes = list(pool.map(work, jobs))
    seconds = time.perf_counter() - started
    assert all(sizes)
    tool = {"obscura": "python package", "obscura-faces": "python package, faces only"}.get(args.tool, args.tool.replace("-", " (") + ")")
    print(json.dumps({"tool": tool, "threads": args.threads, "images": len(jobs), "seconds": seconds, "images_per_s": len(jobs) / seconds}))


if __name__ == "__main__":
    main()
