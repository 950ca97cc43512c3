from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_every_package_passes_mypy_strict() -> None:
    # the packages and strictness come from [tool.mypy] in pyproject.toml
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
