"""Obscura: face and body anonymisation for photos that people upload.

Faces and persons are found with ONNX models (CenterFace INT8 and NanoDet-m, shipped in
this package) through ONNX Runtime (the ``onnxruntime`` package), redacted irreversibly,
and the image is re-encoded without any metadata. Any failure raises an
``obscura.Error``: never the original image passed through.

    import obscura

    anonymizer = obscura.Anonymizer()                 # once; thread-safe
    result = anonymizer.anonymize(open("in.jpg", "rb").read())
    open("out.jpg", "wb").write(result.data)
    print(len(result.regions), "regions redacted")

Settings are the fields of the Rust library's ``Config`` (the same as a TOML config file
of the ``obscura`` command line), given as keyword arguments:
``Anonymizer(detect={"threshold": 0.25}, redact={"style": "blur"})``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from . import _native, errors
from .errors import (
    ConfigError,
    CorruptImage,
    Error,
    ImageTooLarge,
    InvalidImage,
    NotAnImage,
    ProcessingError,
    SetupError,
    UnsupportedImage,
)

if TYPE_CHECKING:
    import numpy
    import numpy.typing

__version__: str = _native.__version__

#: The formats written (``format=``). HEIC and AVIF are read too, and come out as JPEG.
Format = Literal["jpeg", "png", "webp", "gif", "tiff"]
StrPath = Union[str, "os.PathLike[str]"]

_PACKAGE = Path(__file__).resolve().parent
#: The models this package ships (verified against their pinned sha256 when loaded).
MODELS_DIR = _PACKAGE / "models"
#: libheif (HEIC and AVIF input) and the libraries it needs, shipped in this package; the
#: core loads it when it first reads such a file. ``OBSCURA_LIBHEIF`` names another.
LIBHEIF = _PACKAGE / "lib" / "libheif.so.1"
if LIBHEIF.is_file() and not os.environ.get("OBSCURA_LIBHEIF"):
    os.environ["OBSCURA_LIBHEIF"] = str(LIBHEIF)


@dataclass(frozen=True)
class Region:
    """A redacted region, in pixels of the upright image."""

    kind: str
    """What was found there: ``"face"``, ``"person"`` or ``"text"``."""
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Result:
    """An anonymised image."""

    data: bytes
    """The encoded image (the input's format unless another was asked for)."""
    format: Format
    regions: list[Region]
    report: dict[str, Any]
    """What was done: the same JSON as the command line's ``--report`` for one image."""


def _regions(report: dict[str, Any]) -> list[Region]:
    return [
        Region(r["class"], r["rect"]["x"], r["rect"]["y"], r["rect"]["w"], r["rect"]["h"])
        for r in report["regions"]
    ]


def onnxruntime_library() -> Optional[Path]:
    """The ``libonnxruntime.so`` of the installed ``onnxruntime`` package, if it is the
    version Obscura pins (found without importing the package)."""
    _, library = _native.runtime_pin()
    spec = importlib.util.find_spec("onnxruntime")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "capi" / library
        if candidate.is_file():
            return candidate
    return None


def _packaged(models_named: bool = False, library_named: bool = False) -> tuple[Optional[Path], Optional[Path]]:
    """This package's models folder and the ``onnxruntime`` package's library, each as
    ``None`` where the caller or the environment (``OBSCURA_MODELS``, ``OBSCURA_ORT_LIB``,
    ``ORT_DYLIB_PATH``) names another. Raises ``SetupError`` when the library is needed and
    the package is not installed. The API and the ``obscura`` command both start here."""
    models = None if models_named or os.environ.get("OBSCURA_MODELS") or not MODELS_DIR.is_dir() else MODELS_DIR
    library = None
    if not (library_named or os.environ.get("OBSCURA_ORT_LIB") or os.environ.get("ORT_DYLIB_PATH")):
        library = onnxruntime_library()
        if library is None:
            version, _ = _native.runtime_pin()
            raise SetupError(
                f"ONNX Runtime not found: install the onnxruntime=={version} package "
                "(a dependency of obscura), or set OBSCURA_ORT_LIB to its libonnxruntime.so"
            )
    return models, library


def _settings_json(settings: dict[str, Any]) -> str:
    """The settings as the Rust ``Config`` reads them, with this package's models and
    the ``onnxruntime`` package's library filled in unless given (see ``_packaged``)."""
    for name, value in settings.items():
        if name in ("runtime", "detect", "redact", "image") and value is not None and not isinstance(value, dict):
            raise ConfigError(f"invalid settings: {name} must be a dict of its fields, not {type(value).__name__}")
    settings = dict(settings)
    runtime = dict(settings.get("runtime") or {})
    models, library = _packaged(bool(runtime.get("models_dir")), bool(runtime.get("ort_library")))
    if models is not None:
        runtime["models_dir"] = models
    if library is not None:
        runtime["ort_library"] = library
    settings["runtime"] = runtime
    def path(value: Any) -> str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} is not a setting value")

    try:
        return json.dumps(settings, default=path)
    except (TypeError, ValueError, RecursionError) as e:
        raise ConfigError(f"invalid settings: {e}") from None


class Anonymizer:
    """The anonymiser: build it once (it loads ONNX Runtime and the models) and share it
    between threads; every method may be called from many threads at once, and the GIL
    is released while an image is processed.

    Keyword arguments are the fields of the library's ``Config``: ``runtime``,
    ``detect``, ``redact``, ``image`` (dicts) and ``max_concurrency`` (an int). Invalid or
    unknown settings raise ``ConfigError`` here, before any image is read.

    >>> anonymizer = Anonymizer(detect={"targets": ["face"]}, redact={"style": "fill"})
    """

    def __init__(self, **settings: Any) -> None:
        self._native = _native.Anonymizer(_settings_json(settings))
        self.config: dict[str, Any] = json.loads(self._native.config_json())
        """The effective settings, defaults included."""
        self.models: list[dict[str, str]] = json.loads(self._native.models_json())
        """The models in use: name, path, sha256 and device of each."""
        limit = self.config.get("max_concurrency") or os.cpu_count() or 1
        self._async_slots = limit
        self._async_limits: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def anonymize(self, data: bytes, *, format: Optional[Format] = None) -> Result:
        """Anonymises an encoded JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image; the output has
        the input's format (JPEG for HEIC and AVIF) unless ``format`` names another. Raises an ``obscura.Error`` subclass on any
        failure (``InvalidImage`` for bad input), never returning the input."""
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            # Not bytes(data): bytes(10**10) would allocate ten gigabytes of zeros.
            raise TypeError(f"anonymize() takes the encoded image as bytes, not {type(data).__name__}")
        out, report = self._native.anonymize(data, format)
        parsed = json.loads(report)
        return Result(out, parsed["format"], _regions(parsed), parsed)

    def anonymize_file(self, src: StrPath, dst: StrPath) -> dict[str, Any]:
        """Anonymises the file ``src`` into ``dst``, written atomically (readers see the old
        file or the whole new one). The output format follows ``dst``'s extension. ``dst``
        may not be ``src`` or a link to it (``FileExistsError``). Returns the report."""
        return json.loads(self._native.anonymize_file(os.fspath(src), os.fspath(dst)))

    def anonymize_array(self, pixels: "numpy.typing.NDArray[numpy.uint8]") -> "numpy.typing.NDArray[numpy.uint8]":
        """Anonymises decoded pixels: an ``H×W×3`` (RGB) or ``H×W×4`` (RGBA) ``uint8`` array,
        as Pillow's ``numpy.asarray(image)`` gives. OpenCV arrays are BGR while the models
        expect RGB: pass ``image[..., ::-1]`` and reverse the result again. Returns a new
        array; the input is not changed. No file format is involved, so no metadata."""
        return self.anonymize_array_with_report(pixels)[0]

    def anonymize_array_with_report(
        self, pixels: "numpy.typing.NDArray[numpy.uint8]"
    ) -> "tuple[numpy.typing.NDArray[numpy.uint8], list[Region], dict[str, Any]]":
        """``anonymize_array``, also returning the regions and the report."""
        import numpy

        array = numpy.asarray(pixels)
        if array.dtype != numpy.uint8:
            raise ConfigError(f"an image array must be uint8, not {array.dtype}")
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ConfigError(f"an image array must be H×W×3 or H×W×4, not shape {array.shape}")
        height, width, channels = array.shape
        # The limits before the copy below: a broadcast array of 3 bytes can stand for
        # gigabytes once made contiguous.
        self._native.check_size(min(width, 2**32 - 1), min(height, 2**32 - 1))
        out, report = self._native.anonymize_pixels(numpy.ascontiguousarray(array).tobytes(), width, height, channels)
        parsed = json.loads(report)
        return numpy.frombuffer(out, dtype=numpy.uint8).reshape(height, width, channels).copy(), _regions(parsed), parsed

    async def anonymize_async(self, data: bytes, *, format: Optional[Format] = None) -> Result:
        """``anonymize`` for asyncio: runs in a worker thread (the event loop keeps
        running), with at most ``max_concurrency`` images (default: the CPU count) in
        flight; further callers wait their turn."""
        loop = asyncio.get_running_loop()
        with self._lock:
            slots = self._async_limits.setdefault(loop, asyncio.Semaphore(self._async_slots))
        async with slots:
            return await loop.run_in_executor(None, lambda: self.anonymize(data, format=format))

    def __repr__(self) -> str:
        names = ", ".join(m["name"] for m in self.models)
        return f"<obscura.Anonymizer models=[{names}]>"


__all__ = [
    "Anonymizer",
    "Result",
    "Region",
    "Format",
    "MODELS_DIR",
    "onnxruntime_library",
    *errors.__all__,
]
