"""The ``obscura`` command installed with the package: the project's own command-line
binary (shipped in ``obscura/bin``), run with this package's models and the
``onnxruntime`` package's library unless the environment names others."""

from __future__ import annotations

import os
import sys

from . import MODELS_DIR, _native, onnxruntime_library

BINARY = MODELS_DIR.parent / "bin" / "obscura"


def main() -> None:
    if not BINARY.is_file():
        sys.exit(f"obscura: the command-line binary is missing from this installation ({BINARY})")
    env = dict(os.environ)
    if not env.get("OBSCURA_MODELS") and MODELS_DIR.is_dir():
        env["OBSCURA_MODELS"] = str(MODELS_DIR)
    if not env.get("OBSCURA_ORT_LIB") and not env.get("ORT_DYLIB_PATH"):
        library = onnxruntime_library()
        if library is None:
            version, _ = _native.runtime_pin()
            sys.exit(f"obscura: ONNX Runtime not found: install onnxruntime=={version}, or set OBSCURA_ORT_LIB")
        env["OBSCURA_ORT_LIB"] = str(library)
    os.execve(BINARY, [str(BINARY), *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
