"""Static INT8 quantisation of the converted CenterFace model (models/centerface.onnx).

    python quantize_centerface.py CENTERFACE_ONNX SKIMAGE_WHEEL OUT_ONNX

Calibration: the photographic PNGs that ship in the scikit-image wheel (the same pinned
wheel the set-up takes its sample photo from), each at full size and the astronaut also
at 1/2 and 1/4 size (block means, for small faces), padded to multiples of 32 exactly
as Obscura feeds the model. Activation ranges by MinMax, weights per channel (int8),
activations uint8, QOperator format (QLinearConv: ONNX Runtime's VNNI kernels).
The graph is first moved from opset 9 to 13 (per-channel quantisation needs it).

Deterministic: with the pinned onnx / onnxruntime / numpy / pillow versions the output
is byte-identical, so scripts/setup pins its sha256.
"""
import io, os, sys, zipfile
import numpy as np
import onnx
from onnx import version_converter
from PIL import Image
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

src, wheel, dst = sys.argv[1], sys.argv[2], sys.argv[3]
CALIBRATION = ["astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "ihc",
               "motorcycle_left", "motorcycle_right"]


def images():
    with zipfile.ZipFile(wheel) as z:
        for name in CALIBRATION:
            rgb = np.asarray(Image.open(io.BytesIO(z.read(f"skimage/data/{name}.png"))).convert("RGB"), dtype=np.float32)
            yield rgb
            if name == "astronaut":
                for k in (2, 4):
                    h, w = rgb.shape[0] // k * k, rgb.shape[1] // k * k
                    yield rgb[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = images()

    def get_next(self):
        rgb = next(self.it, None)
        if rgb is None:
            return None
        h, w, _ = rgb.shape
        x = np.zeros((1, 3, (h + 31) // 32 * 32, (w + 31) // 32 * 32), np.float32)
        x[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        return {"input.1": x}


opset13 = dst + ".opset13.onnx"
onnx.save(version_converter.convert_version(onnx.load(src), 13), opset13)
quantize_static(opset13, dst, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
os.remove(opset13)
print("wrote", dst)
