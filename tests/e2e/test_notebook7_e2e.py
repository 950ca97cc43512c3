"""Every widget in Notebook 7 (``jupyter notebook``: ``/tree`` and ``/notebooks/...``) in headless
Chromium, against a real hub process: each renders (not an error, not a text fallback) and answers
one click. Screenshots go to ``tests/e2e/screenshots/notebook7-*.png``.

Notebook 7 is built on JupyterLab's components, so the JupyterLab helpers of ``e2e.notebook``
drive it too (the same ``.jp-NotebookPanel`` and ``window.jupyterapp``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from e2e.notebook import KERNEL_START_TIMEOUT_MS, run_cell, wait_idle
from e2e.servers import JupyterLab, screenshot, start_jupyterlab
from hub_process import HubProcess, real_hub  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVIL = "<img src=x onerror=alert(1)>"


@contextlib.contextmanager
def start_notebook7(workdir: Path) -> Iterator[JupyterLab]:
    """``jupyter notebook`` (Notebook 7) with all its state in ``workdir``, as ``start_jupyterlab`` runs JupyterLab."""
    pytest.importorskip("notebook", minversion="7", reason="Notebook 7 is in the test extra: bash dev.sh setup")
    with start_jupyterlab(workdir, app="notebook") as server:
        yield server


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    with start_notebook7(tmp_path_factory.mktemp("notebook7")) as server:
        yield server


CELLS = [
    "%load_ext kachery_jupyter\nimport kachery_core as kc",
    "%kc_login",
    f"meta = {{'subject': 'M12', 'note': {EVIL!r}}}\n%kc_store meta --label 'meta.json'",
    "%kc_browse",
    "feed = kc.create_feed(label='training run')\n"
    "feed.append_messages([{'epoch': e, 'loss': 1 / (e + 1)} for e in range(5)])\n"
    "%kc_feed $feed.uri",
    "%%kc_task mean_rate\ndef mean_rate(spike_times, duration):\n    return len(spike_times) / duration",
    "print(kc.request_task(task_type='calculation', task_name='mean_rate',"
    " task_input={'spike_times': [1, 2, 3], 'duration': 2}, timeout_sec=60))\n%kc_tasks",
]


def open_in_notebook7(page: Page, server: JupyterLab, path: str) -> None:
    """Through ``/tree`` (the file is listed) to ``/notebooks/<path>``, then wait for an idle kernel."""
    page.goto(f"{server.url}tree?token={server.token}")
    expect(page.get_by_text(path).first).to_be_visible(timeout=KERNEL_START_TIMEOUT_MS)
    page.goto(f"{server.url}notebooks/{path}?token={server.token}")
    expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=KERNEL_START_TIMEOUT_MS)
    wait_idle(page, KERNEL_START_TIMEOUT_MS)


def test_every_widget_renders_and_answers_a_click_in_notebook_7(
    notebook7: JupyterLab, page: Page, real_hub: HubProcess, tmp_path: Path
) -> None:
    # A kernel that knows the hub but is not signed in: the sign-in panel is the first thing to use.
    kernel = notebook7.add_kernel({"KACHERY_CLOUD_DIR": str(tmp_path / "kernel"), "KACHERY_HUB_URL": real_hub.url})
    notebook7.write_notebook("widgets.ipynb", CELLS, kernel=kernel)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    open_in_notebook7(page, notebook7, "widgets.ipynb")
    assert "/notebooks/widgets.ipynb" in page.url and "/lab" not in page.url

    assert "not signed in: run %kc_login" in run_cell(page, 0)

    # The sign-in panel: a token pasted, one click.
    run_cell(page, 1)
    login = page.locator(".kc-login")
    expect(login).to_be_visible()
    screenshot(login, "notebook7-login-signed-out")
    login.locator("input.kc-token").fill(real_hub.token("ada@example.org"))
    login.get_by_role("button", name="Use token").click()
    expect(login.locator(".kc-signed-in")).to_have_text("Signed in as ada@example.org", timeout=20_000)
    screenshot(login, "notebook7-login-signed-in")

    # The StoredURI display: label and size, the URI, a Copy button that copies.
    run_cell(page, 2)
    stored = page.locator(".kachery-uri")
    expect(stored).to_be_visible()
    expect(stored).to_contain_text("meta.json")
    expect(stored.locator("code")).to_contain_text("sha1://")
    assert stored.locator("img").count() == 0
    stored.get_by_role("button", name="Copy").click()
    expect(stored.get_by_role("button")).to_have_text("Copied")
    screenshot(stored, "notebook7-stored-uri")

    # The project browser: the file just stored, and a click on it previews the JSON (escaped).
    run_cell(page, 3)
    browser = page.locator(".kc-browser")
    expect(browser).to_be_visible()
    row = browser.locator(".kc-browser-row[role=option]").filter(has_text="meta.json")
    expect(row).to_have_count(1, timeout=20_000)
    row.click()
    expect(browser.locator(".kc-browser-preview")).to_contain_text("M12", timeout=20_000)
    expect(browser.locator(".kc-browser-preview")).to_contain_text(EVIL)
    assert browser.locator("img").count() == 0, "values are text, never markup"
    screenshot(browser, "notebook7-project-browser")

    # The feed viewer: the messages, and a click on one opens it.
    run_cell(page, 4)
    viewer = page.locator(".kc-feed")
    expect(viewer).to_be_visible()
    expect(viewer.locator(".kc-feed-row")).to_have_count(5, timeout=20_000)
    viewer.locator(".kc-feed-row").first.click()
    expect(viewer.locator(".kc-feed-row.kc-selected")).to_have_count(1)
    expect(viewer.locator(".kc-feed-detail")).to_be_visible()
    screenshot(viewer, "notebook7-feed-viewer")

    # The task panel: the handler this kernel serves, its job, and a click opens the job.
    assert "serving calculation mean_rate(spike_times, duration)" in run_cell(page, 5)
    assert "1.5" in run_cell(page, 6)
    panel = page.locator(".kc-tasks")
    expect(panel).to_be_visible()
    expect(panel.locator(".kc-task-handler")).to_have_text(["mean_rate"])
    job = panel.locator('.kc-task-job[data-status="finished"]')
    expect(job).to_have_count(1, timeout=20_000)
    job.click()
    expect(panel.locator(".kc-task-job.kc-selected")).to_have_count(1)
    expect(panel.locator(".kc-task-detail")).to_be_visible()
    screenshot(panel, "notebook7-task-panel")

    # No widget fell back to its text (that is what an error to render looks like) and no script failed.
    shown = page.locator(".jp-NotebookPanel").inner_text()
    assert "Error displaying widget" not in shown and "object at 0x" not in shown
    # Notebook 7's own bundle (static/notebook/) throws while loading a settings schema; only errors
    # from elsewhere (anywidget, the widgets' modules) are ours.
    ours = [e for e in errors if "/static/notebook/" not in e]
    assert not ours, ours
    screenshot(page, "notebook7-page")

