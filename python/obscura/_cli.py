"""The ``obscura`` command installed with the package: the project's own command-line
binary (shipped in ``obscura/bin``), run with this package's models and the
``onnxruntime`` package's library unless the environment names others."""

from __future__ import annotations

import os
import sys

from . import MODELS_DIR, SetupError, _packaged

BINARY = MODELS_DIR.parent / "bin" / "obscura"


def main() -> None:
    if not BINARY.is_file():
        sys.exit(f"obscura: the command-line binary is missing from this installation ({BINARY})")
    try:
        models, library = _packaged()
    except SetupError as e:
        sys.exit(f"obscura: {e}")
    env = dict(os.environ)
    if models is not None:
        env["OBSCURA_MODELS"] = str(models)
    if library is not None:
        env["OBSCURA_ORT_LIB"] = str(library)
    os.execve(BINARY, [str(BINARY), *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
