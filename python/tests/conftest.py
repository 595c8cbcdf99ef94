"""Shared fixtures: the installed package (never the checkout's source folder) and one
Anonymizer for the whole run."""

from __future__ import annotations

import pytest

import obscura
from photos import EVAL


def pytest_configure(config: pytest.Config) -> None:
    # The tests are of the installed wheel: a package imported from the checkout would
    # have no models and no extension, and would not be what users get.
    assert "site-packages" in obscura.__file__, f"obscura imported from {obscura.__file__}, not an installed wheel"
    if not (EVAL / "manifest.csv").is_file():
        pytest.exit(f"the shared evaluation photos are missing ({EVAL}); set OBSCURA_EVAL_DIR", returncode=2)


@pytest.fixture(scope="session")
def anonymizer() -> obscura.Anonymizer:
    return obscura.Anonymizer()
