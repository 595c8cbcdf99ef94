"""The installed package: what it carries, what it depends on, and its command line."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import obscura
from photos import ROOT, must_cover_faces, photo


def manifest() -> dict[str, dict[str, str]]:
    """models/models.toml of the checkout the wheel was built from."""
    import tomllib

    return tomllib.loads((ROOT / "models" / "models.toml").read_text())


def test_onnxruntime_is_the_version_the_manifest_pins() -> None:
    pin = manifest()["runtime"]["onnxruntime"]
    assert obscura._native.runtime_pin() == (pin["version"], pin["library"])
    requires = importlib.metadata.requires("obscura") or []
    assert f"onnxruntime=={pin['version']}" in requires, requires
    assert importlib.metadata.version("onnxruntime") == pin["version"]
    library = obscura.onnxruntime_library()
    assert library is not None and library.name == pin["library"]
    assert hashlib.sha256(library.read_bytes()).hexdigest() == pin["library_sha256"]


def test_the_wheel_ships_every_model_the_manifest_names() -> None:
    for model in manifest()["model"].values():
        shipped = obscura.MODELS_DIR / model["file"]
        digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
        verified = shipped.with_name(shipped.name + ".verified")
        assert digest == model["sha256"] or (verified.is_file() and verified.read_text().split() == [digest, model["sha256"]]), model


def test_typing_information_is_shipped() -> None:
    package = Path(obscura.__file__).parent
    assert (package / "py.typed").is_file() and (package / "_native.pyi").is_file()


def test_the_obscura_command_is_installed(tmp_path) -> None:
    command = Path(sys.executable).parent / "obscura"
    version = subprocess.run([command, "--version"], capture_output=True, text=True, check=True).stdout
    assert re.match(r"obscura \d+\.\d+\.\d+", version), version
    src = tmp_path / "in.jpg"
    src.write_bytes(photo(next(iter(must_cover_faces()))))
    run = subprocess.run([command, "anonymise", src, "-o", tmp_path / "out.jpg", "--report", tmp_path / "r.json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.jpg").read_bytes()[:2] == b"\xff\xd8"
    bad = subprocess.run([command, "anonymise", tmp_path / "r.json", "-o", tmp_path / "bad.jpg"], capture_output=True, text=True)
    assert bad.returncode != 0 and not (tmp_path / "bad.jpg").exists()
    module = subprocess.run([sys.executable, "-m", "obscura", "--version"], capture_output=True, text=True, check=True)
    assert module.stdout == version
