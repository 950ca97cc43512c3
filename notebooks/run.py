"""Run a notebook with a real kernel and print what each cell shows.

    python notebooks/run.py [NOTEBOOK.ipynb]   (default: notebooks/quickstart.ipynb)

Exits non-zero when a cell raises. The test suite runs every notebook the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    lines = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines.append(cell.source)
            continue
        lines.append("".join(">>> " + line for line in cell.source.splitlines(True)))
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                lines.append(output.text.rstrip())
            elif "data" in output and "text/plain" in output.data:
                lines.append(output.data["text/plain"])
    return "\n\n".join(lines) + "\n"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "quickstart.ipynb"
    print(text_of(execute(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
