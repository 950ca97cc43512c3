"""A widget's front end reaches the page as one module: its imports of shared code are put in place."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kachery_jupyter._assets import asset, module

WIDGETS = {"feedviewer.js": "createViewer", "taskpanel.js": "createPanel", "browser.js": "createBrowser"}


@pytest.mark.parametrize("name", list(WIDGETS))
def test_a_widget_module_arrives_whole(name: str, tmp_path: Path) -> None:
    source = asset(name).read_text(encoding="utf-8")
    assert 'from "./common.js";' in source  # the shared helpers are written once, in common.js
    text = module(name)
    assert not [line for line in text.splitlines() if line.startswith("import ")], "a relative import is left"
    assert text.count("function visibleWindow(") == 1 and text.count("function h(") == 1
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed here (bash dev.sh test installs it)")
    # What the page gets must load on its own, from a folder without common.js beside it.
    path = tmp_path / name.replace(".js", ".mjs")
    path.write_text(text, encoding="utf-8")
    check = (f"const m = await import({str(path)!r}); "
             f"if (typeof m.default?.render !== 'function' || typeof m.{WIDGETS[name]} !== 'function' "
             "|| m.visibleWindow(0, 100, 10, 1000).last !== 16) process.exit(3);")
    done = subprocess.run([node, "--input-type=module", "-e", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
