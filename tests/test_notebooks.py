"""Every notebook in notebooks/ runs top to bottom in a real kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "notebooks"))
from run import execute, text_of  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, kachery_dir: Path) -> None:
    nb = execute(path)
    text = text_of(nb)
    assert "Traceback" not in text
    if path.name == "quickstart.ipynb":
        assert "deterministic: sha1://" in text
        assert "UnknownURISchemeError - " in text
        assert (kachery_dir / "private.pem").exists(), "the kernel used the test's KACHERY_CLOUD_DIR"
