"""Static INT8 quantisation of a converted model: CenterFace (models/centerface.onnx) or
NanoDet-m (models/nanodet.onnx).

    python quantize.py [--full-range] centerface|nanodet SRC_ONNX SKIMAGE_WHEEL OUT_ONNX

--full-range writes 8-bit weights (-127..127), as before issue 21: the files whose scores
depend on the CPU (see below). For side-by-side comparisons only (scripts/compare-deface);
scripts/setup never installs them.

Calibration: the photographic PNGs that ship in the scikit-image wheel (the same pinned
wheel the set-up takes its sample photo from), none of them from the evaluation set,
fed as Obscura feeds each model (resized here with Pillow, not Obscura's resize):
- centerface: each photo at full size, and the astronaut also at 1/2 and 1/4 size (block
  means, for small faces), padded to multiples of 32, RGB 0-255;
- nanodet: each photo stretched to 416x416 (bilinear), RGB / 255.
Activation ranges by MinMax, weights per channel in 7 bits (int8 from -64 to 64:
`reduce_range`), activations uint8, QOperator format (QLinearConv).

Why 7-bit weights: ONNX Runtime multiplies uint8 activations by int8 weights. With
AVX-512 VNNI it sums the products in 32 bits; on CPUs without VNNI (AVX2, AVX-512
without VNNI) it adds pairs of products in 16 bits with saturation (vpmaddubsw), and
255 x 127 x 2 overflows that, so the same model file gave other scores there (a face at
0.57 scored 0.23) and missed large faces. With weights in
[-64, 64] a pair is at most 255 x 64 x 2 = 32,640 < 32,767: no kernel saturates, and
the outputs are bit-identical on both kinds of CPU (measured under qemu-user's Haswell,
benches/RESULTS.md). CenterFace's graph is first moved from
opset 9 to 13 (per-channel quantisation needs it); NanoDet's already is opset 13.

Deterministic: with the pinned onnx / onnxruntime / numpy / pillow versions the output
is byte-identical run to run (and was on the emulated AVX2 CPU too), so scripts/setup
pins its sha256 (models/models.toml); where calibration rounds differently, setup checks
the result by its detections instead (models/tools/parity.py).
"""
import io, os, sys, zipfile
import numpy as np
import onnx
from onnx import version_converter
from PIL import Image
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

args = sys.argv[1:]
full_range = args[:1] == ["--full-range"]
kind, src, wheel, dst = args[full_range:]
CALIBRATION = ["astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "ihc",
               "motorcycle_left", "motorcycle_right"]
NANODET_SIZE = 416


def photos():
    with zipfile.ZipFile(wheel) as z:
        for name in CALIBRATION:
            yield name, Image.open(io.BytesIO(z.read(f"skimage/data/{name}.png"))).convert("RGB")


def centerface_inputs():
    for name, photo in photos():
        rgb = np.asarray(photo, dtype=np.float32)
        sizes = [rgb]
        if name == "astronaut":
            for k in (2, 4):
                h, w = rgb.shape[0] // k * k, rgb.shape[1] // k * k
                sizes.append(rgb[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3)))
        for im in sizes:
            h, w, _ = im.shape
            x = np.zeros((1, 3, (h + 31) // 32 * 32, (w + 31) // 32 * 32), np.float32)
            x[0, :, :h, :w] = im.transpose(2, 0, 1)
            yield {"input.1": x}


def nanodet_inputs():
    for _, photo in photos():
        im = photo.resize((NANODET_SIZE, NANODET_SIZE), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0
        yield {"input_1:0": x.transpose(2, 0, 1)[None].copy()}


class Reader(CalibrationDataReader):
    def __init__(self, inputs):
        self.it = inputs

    def get_next(self):
        return next(self.it, None)


if kind == "centerface":
    inputs = centerface_inputs()
    model = dst + ".opset13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(src), 13), model)
elif kind == "nanodet":
    inputs, model = nanodet_inputs(), src
else:
    sys.exit(f"quantize.py: unknown model kind {kind!r} (centerface or nanodet)")
quantize_static(model, dst, Reader(inputs), quant_format=QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not full_range,
                calibrate_method=CalibrationMethod.MinMax)
if model != src:
    os.remove(model)
print("wrote", dst)
