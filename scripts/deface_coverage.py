"""Coverage recall of deface 1.5.0 on shared/eval, scored like `obscura eval`.

Runs deface's own CenterFace call (ONNX Runtime backend) on every face-scored photo,
grows each box as deface's CLI does (mask scale 1.3), and counts a ground-truth face as
covered when >= 80 % of its box lies inside the union of those regions. Prints JSON.
Usage: python deface_coverage.py EVAL_DIR THRESHOLD
"""
import csv, json, sys
import numpy as np
import imageio.v2 as imageio
from deface.centerface import CenterFace

eval_dir, thresh = sys.argv[1], float(sys.argv[2])
with open(f"{eval_dir}/manifest.csv", newline="") as f:
    images = [r["image"] for r in csv.DictReader(f) if r["face_gt"].startswith("yes")]
faces = {}
with open(f"{eval_dir}/faces_wider_attributes.csv", newline="") as f:
    for r in csv.DictReader(f):
        faces.setdefault(r["image"], []).append(
            (float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"]), r["official_eval_subset"]))
cf = CenterFace(in_shape=None, backend="onnxrt")
total = covered = must_total = must_covered = false_regions = dirty = 0
for name in images:
    frame = imageio.imread(f"{eval_dir}/images/{name}")
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, -1)
    frame = frame[..., :3]
    h, w = frame.shape[:2]
    dets, _ = cf(frame, threshold=thresh)
    mask = np.zeros((h, w), bool)
    n_regions = 0
    for x1, y1, x2, y2, _score in dets:
        bw, bh = x2 - x1, y2 - y1  # deface's scale_bb with mask_scale 1.3
        x1, x2, y1, y2 = x1 - 0.3 * bw, x2 + 0.3 * bw, y1 - 0.3 * bh, y2 + 0.3 * bh
        xa, ya = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        xb, yb = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
        if xb > xa and yb > ya:
            mask[ya:yb, xa:xb] = True
            n_regions += 1
    gts = faces.get(name, [])
    if not gts:
        false_regions += n_regions
        dirty += n_regions > 0
    for x, y, gw, gh, subset in gts:
        xa, ya = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        xb, yb = min(int(np.ceil(x + gw)), w), min(int(np.ceil(y + gh)), h)
        area = max(xb - xa, 0) * max(yb - ya, 0)
        ok = area > 0 and mask[ya:yb, xa:xb].sum() / area >= 0.8
        total += 1
        covered += ok
        if subset == "easy" and gh >= 32:
            must_total += 1
            must_covered += ok
print(json.dumps({"all": covered / total, "must_cover": must_covered / must_total,
                  "false_regions": false_regions, "photos_with_false_regions": dirty}))
