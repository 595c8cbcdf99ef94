"""How much of a photo a text detector marks as text when there is little or none: the
check that chose PP-OCRv4 over the smaller PP-OCRv6 tiny (models/README.md).

    python models/tools/text_stability.py EVAL_DIR NAME=MODEL.onnx [NAME=MODEL.onnx ...]
    # needs onnxruntime, numpy, Pillow (PyPI)

For every 25th photo of EVAL_DIR/images (from the 6th), scaled to at most 960 px: the
share of pixels above 0.3 as is, darkened to 30 %, with black bars (an eighth of the
height top and bottom) and with four black boxes (what a filled redaction leaves).
Prints the mean and largest share per model and case, and on how many photos it is above 5 %.
"""
import glob
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageEnhance

eval_dir, specs = sys.argv[1], sys.argv[2:]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
sessions = {name: ort.InferenceSession(path, options) for name, path in (s.split("=", 1) for s in specs)}


def marked(image):
    bgr = np.asarray(image).astype(np.float32)[..., ::-1]
    x = ((bgr / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()
    return {name: float((s.run(None, {s.get_inputs()[0].name: x})[0][0, 0] > 0.3).mean()) for name, s in sessions.items()}


results = {}
for path in sorted(glob.glob(f"{eval_dir}/images/*"))[5::25]:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = min(1.0, 960 / max(w, h))
    image = image.resize((max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32)))
    W, H = image.size
    bars = image.copy()
    d = ImageDraw.Draw(bars)
    d.rectangle([0, 0, W, H // 8], fill=0)
    d.rectangle([0, H - H // 8, W, H], fill=0)
    boxes = image.copy()
    d = ImageDraw.Draw(boxes)
    for i in range(4):
        d.rectangle([W * i // 4 + 10, H // 3, W * i // 4 + W // 6, H // 3 + H // 8], fill=0)
    for case, variant in (("plain", image), ("darkened", ImageEnhance.Brightness(image).enhance(0.3)), ("bars", bars), ("black boxes", boxes)):
        for name, share in marked(variant).items():
            results.setdefault((case, name), []).append(share)
for (case, name), shares in sorted(results.items()):
    a = np.array(shares)
    print(f"{case:12} {name:10} mean {a.mean():.4f}  max {a.max():.3f}  above 5 %: {(a > 0.05).sum()}/{len(a)}")
