"""Checks that a model file the set-up made itself behaves as the pinned one does.

    python parity.py raw MODEL REFERENCE_JSON KEY
    python parity.py scores KIND MODEL SKIMAGE_WHEEL REFERENCE_JSON [--record]

Two checks, for the two reasons a made file can differ from its pinned sha256:

- raw: a converted FP32 model (tf2onnx is not byte-reproducible). Its raw outputs on the
  synthetic input of scripts/nanodet-fixture must match the reference outputs stored
  under KEY in tests/fixtures/nanodet_reference.json within 1e-4 (FP32 kernels of
  different CPUs differ by about 1e-5).
- scores: an INT8 quantisation (KIND centerface or nanodet) whose bytes differ from the
  pin, because its FP32 source was built here or because calibration ran on a CPU whose
  float kernels round differently (activation ranges move in the last bits). On the
  fixed photos of tests/fixtures/int8_reference.json (photographs from the pinned
  scikit-image wheel) the scores the detector thresholds (CenterFace's face heatmap,
  NanoDet's person class) must match the pinned model's: every score the pinned model
  puts at `floor` or more within `tolerance`, and no other score above `floor` +
  `tolerance` (both numbers stored in that file). So at any threshold at or above
  `floor` (the lowest Obscura uses, the crowd threshold, is 0.05) a detection can differ
  only where a score lies within `tolerance` of that threshold. The box outputs (sizes,
  offsets, distances) are not compared: what is checked is which cells are detections.
  `--record` writes the pinned model's scores there instead (run it after a deliberate
  change of the pinned models).

Exit status: 0 when the model passes, 1 when it does not (one line on stderr either
way), 2 when the check could not run (bad arguments, an unreadable model).
"""
import io, json, sys, zipfile

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def raw(model, reference, key):
    ref = json.load(open(reference))[key]
    c, y, x = np.meshgrid(np.arange(3), np.arange(416), np.arange(416), indexing="ij")
    inp = (((7 * x + 13 * y + 29 * c) % 256) / 255.0).astype(np.float32)[None]
    out = {(o.shape[1], o.shape[2]): o[0] for o in session(model).run(None, {"input_1:0": inp})}
    worst = max(float(np.abs(out[(p["grid"] ** 2, p["channels"])][:8].ravel() - np.array(p["first"])).max())
                for p in ref)
    ok = worst < 1e-4
    print(f"parity: {model} differs from the reference outputs ({key}) by at most {worst:.2e} "
          f"({'within' if ok else 'over'} 1e-4)", file=sys.stderr)
    return ok


def score_maps(kind, model, wheel, photos):
    """{photo: flat array of the thresholded scores}, each photo fed as Obscura feeds the model
    (stretched to 416x416 for NanoDet; padded to multiples of 32 for CenterFace)."""
    from PIL import Image  # here: the raw check runs where Pillow may be missing

    s = session(model)
    maps = {}
    with zipfile.ZipFile(wheel) as z:
        for name in photos:
            im = Image.open(io.BytesIO(z.read(f"skimage/data/{name}.png"))).convert("RGB")
            if kind == "nanodet":
                x = np.asarray(im.resize((416, 416), Image.BILINEAR), np.float32) / 255.0
                out = s.run(None, {"input_1:0": x.transpose(2, 0, 1)[None].copy()})
                # Score levels by stride (most cells first), whatever order the file lists them in.
                levels = sorted((o for o in out if o.shape[2] == 80), key=lambda o: -o.shape[1])
                maps[name] = np.concatenate([o[0][:, 0] for o in levels])
            else:
                rgb = np.asarray(im, np.float32)
                h, w, _ = rgb.shape
                x = np.zeros((1, 3, (h + 31) // 32 * 32, (w + 31) // 32 * 32), np.float32)
                x[0, :, :h, :w] = rgb.transpose(2, 0, 1)
                maps[name] = s.run(["537"], {"input.1": x})[0].ravel()
    return maps


def scores(kind, model, wheel, reference, record):
    fixture = json.load(open(reference))
    entry = fixture[kind]
    maps = score_maps(kind, model, wheel, fixture["photos"])
    floor, tol = fixture["floor"], fixture["tolerance"]
    if record:
        entry["cells"] = {name: {str(i): round(float(m[i]), 6) for i in np.where(m >= floor)[0]}
                          for name, m in maps.items()}
        entry["sizes"] = {name: int(m.size) for name, m in maps.items()}
        json.dump(fixture, open(reference, "w"), indent=1, sort_keys=True)
        print(f"parity: recorded {kind} scores of {model}", file=sys.stderr)
        return True
    worst, where = 0.0, ""  # where: the photo and cell of the largest difference
    for name, m in maps.items():
        if m.size != entry["sizes"][name]:
            print(f"parity: {model} gives {m.size} {kind} scores on {name}, the pinned model "
                  f"{entry['sizes'][name]}", file=sys.stderr)
            return False
        ref = np.zeros(m.size, np.float64)
        for i, v in entry["cells"][name].items():
            ref[int(i)] = v
        # Cells under the floor in the reference were stored as 0: compare them only where
        # the candidate reaches the floor.
        seen = (ref > 0) | (m >= floor)
        diff = np.where(seen, np.abs(np.where(ref > 0, ref, np.minimum(m, floor)) - m), 0.0)
        i = int(diff.argmax())
        if diff[i] > worst:
            worst, where = float(diff[i]), f" ({name}, cell {i}: {m[i]:.4f} vs {ref[i]:.4f})"
    ok = worst <= tol
    where = where if worst >= 1e-4 else ""  # the reference is stored to 6 decimals
    print(f"parity: {model}'s {kind} scores differ from the pinned model's by at most "
          f"{worst:.4f}{where} ({'within' if ok else 'over'} the tolerance {tol})", file=sys.stderr)
    return ok


def main(a):
    if a[:1] == ["raw"] and len(a) == 4:
        return raw(a[1], a[2], a[3])
    if a[:1] == ["scores"] and len(a) in (5, 6) and a[1] in ("centerface", "nanodet") and a[5:] in ([], ["--record"]):
        return scores(a[1], a[2], a[3], a[4], a[5:] == ["--record"])
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        ok = main(sys.argv[1:])
    except Exception as e:  # the check did not run: not the same as a model that fails it
        print(f"parity: could not check: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)
