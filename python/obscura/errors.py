"""The exceptions Obscura raises. Every one means: no output was produced.

``Error`` is the base of them all. Faults of the input (``InvalidImage`` and its
subclasses) and of the settings (``ConfigError``) are also ``ValueError``s; Obscura's own
failures (``SetupError``, ``ProcessingError``) are also ``RuntimeError``s. File errors of
``Anonymizer.anonymize_file`` are the usual ``OSError``s.
"""


class Error(Exception):
    """Base class of every Obscura error: no anonymised output was produced."""


class ConfigError(Error, ValueError):
    """A setting or option that cannot work, raised before any image is read."""


class InvalidImage(Error, ValueError):
    """The input is not an image Obscura can anonymise (the input's fault)."""


class NotAnImage(InvalidImage):
    """Empty, or not a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image."""


class CorruptImage(InvalidImage):
    """A JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image that is truncated or corrupt."""


class ImageTooLarge(InvalidImage):
    """An image over the size limits (checked from its header, before decoding), or an
    animation or TIFF with more frames or pages than ``image.max_frames``."""


class UnsupportedImage(InvalidImage):
    """An image Obscura refuses rather than alter silently (a HEIF holding several
    images), or a valid image of a kind it cannot read (arithmetic-coded, lossless or
    hierarchical JPEG)."""


class SetupError(Error, RuntimeError):
    """ONNX Runtime or a model could not be found, verified or loaded, or libheif (for
    HEIC and AVIF) is missing."""


class ProcessingError(Error, RuntimeError):
    """Obscura's own failure while processing an image (inference, redaction, encoding)."""


__all__ = [
    "Error",
    "ConfigError",
    "InvalidImage",
    "NotAnImage",
    "CorruptImage",
    "ImageTooLarge",
    "UnsupportedImage",
    "SetupError",
    "ProcessingError",
]
