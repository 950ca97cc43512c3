"""Drive a notebook in JupyterLab from a playwright page, the way a user would.

    open_notebook(page, lab, "demo.ipynb")
    run_cell(page, 0)                 # returns the cell's output text
    page.get_by_role("button", name="count is 0").click()
    assert "count = 1" in run_cell(page, 1)

Cells are addressed by their index in the notebook (markdown cells count too).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

    from e2e.servers import JupyterLab

NOTEBOOK = ".jp-NotebookPanel:visible"
# The toolbar's execution indicator says idle before the kernel has even connected (a keypress
# then is lost), so ask the notebook's session itself; the server exposes window.jupyterapp.
KERNEL_IDLE_JS = """() => {
  const session = window.jupyterapp?.shell.currentWidget?.sessionContext;
  const kernel = session?.session?.kernel;
  return !!kernel && kernel.connectionStatus === "connected" && kernel.status === "idle";
}"""
# The DOM shows an exception and a print to stderr alike; the cell's model tells them apart.
CELL_ERRORS_JS = """(index) => {
  const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
  const outputs = cell.model.outputs ? cell.model.outputs.toJSON() : [];
  return outputs.filter((o) => o.output_type === "error").map((o) => `${o.ename}: ${o.evalue}`);
}"""

KERNEL_START_TIMEOUT_MS = 60_000
CELL_TIMEOUT_MS = 60_000


class CellError(AssertionError):
    """A cell run from the browser ended with an error output."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(f"cell {index} failed:\n{text}")
        self.index = index
        self.text = text


def open_notebook(page: Page, lab: JupyterLab, path: str) -> Locator:
    """Open ``path`` (relative to the server root) and wait until its kernel is idle."""
    page.goto(lab.lab_url(path))
    notebook = page.locator(NOTEBOOK)
    expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=KERNEL_START_TIMEOUT_MS)
    wait_idle(page, KERNEL_START_TIMEOUT_MS)
    return notebook


def wait_idle(page: Page, timeout_ms: float = CELL_TIMEOUT_MS) -> None:
    """Wait until the current notebook's kernel is connected and idle."""
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_ms, polling=50)


def cell(page: Page, index: int) -> Locator:
    return page.locator(NOTEBOOK).locator(".jp-Cell").nth(index)


def cell_output(page: Page, index: int) -> str:
    """Text of everything the cell shows below its input (empty when it has no output)."""
    area = cell(page, index).locator(".jp-OutputArea")
    return area.inner_text() if area.count() else ""


def _prompt_text(target: Locator) -> str:
    return (target.locator(".jp-InputPrompt").first.text_content() or "").strip()


def run_cell(page: Page, index: int, *, check: bool = True, timeout_ms: float = CELL_TIMEOUT_MS) -> str:
    """Run one cell and return its output text; raise CellError on an error output if ``check``.

    Clicks the cell's editor first: a click on a widget makes the widget's cell the
    active one, and a keyboard shortcut would then run that cell instead.
    """
    target = cell(page, index)
    before = _prompt_text(target)
    target.locator(".jp-InputArea-editor").click()
    # Ctrl+Enter runs in place; Shift+Enter would append a cell when run on the last one.
    page.keyboard.press("Control+Enter")
    _wait_for_new_execution_count(target, before, timeout_ms)
    wait_idle(page, timeout_ms)
    if check and page.evaluate(CELL_ERRORS_JS, index):
        raise CellError(index, cell_output(page, index))
    return cell_output(page, index)


def _wait_for_new_execution_count(target: Locator, before: str, timeout_ms: float) -> None:
    """Done means the prompt shows a number it did not show before the run (`[*]` is busy)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        now = _prompt_text(target)
        if re.fullmatch(r"\[\d+\]:", now) and now != before:
            return
        time.sleep(0.05)
    raise TimeoutError(f"cell did not finish within {timeout_ms / 1000:.0f} s (prompt {_prompt_text(target)!r})")


def run_all(page: Page, *, check: bool = True, timeout_ms: float = CELL_TIMEOUT_MS) -> list[str]:
    """Run every code cell in order; returns their output texts (markdown cells give "")."""
    cells = page.locator(NOTEBOOK).locator(".jp-Cell")
    outputs = []
    for i in range(cells.count()):
        is_code = "jp-CodeCell" in (cells.nth(i).get_attribute("class") or "")
        outputs.append(run_cell(page, i, check=check, timeout_ms=timeout_ms) if is_code else "")
    return outputs
