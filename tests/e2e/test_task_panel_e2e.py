"""The task panel in JupyterLab in headless Chromium, against a real hub process.

The notebook's kernel serves two functions with ``%%kc_task`` and shows ``%kc_tasks``;
a separate Python process (another computer, signed in as someone else) requests
them. Nothing is run in the notebook meanwhile: the panel updates by itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import run_python
from playwright.sync_api import expect

import kachery_core as kc
from e2e.contrast import AA, too_low
from e2e.notebook import open_notebook, run_cell
from e2e.servers import THEMES, JupyterLab, screenshot
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVIL = "<img src=x onerror=alert(1)>"
JOB = ".kc-task-job"
LIVE_MS = 20_000
DURATION = re.compile(r"^\d+\.\d\d s$")

CELLS = [
    "%load_ext kachery_jupyter",
    "%%kc_task mean_rate\ndef mean_rate(spike_times, duration):\n    return len(spike_times) / duration",
    f"%%kc_task check_units\ndef check_units(unit):\n    if unit != 'ms':\n        raise ValueError('unknown unit ' + repr(unit) + ' {EVIL}')\n    return unit",
    "%kc_tasks",
]


@pytest.fixture
def ada(real_hub: HubProcess) -> HubProcess:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    kc.set_project_member(kc.get_project_id(), "bob@example.org", "read")
    return real_hub


def request_elsewhere(hub: HubProcess, tmp_path: Path, name: str, task_input: dict[str, Any]) -> str:
    """Bob, on another computer, requests a calculation; what he got."""
    code = (
        "import kachery_core as kc\n"
        f"kc.init(hub_url={hub.url!r}, token={hub.token('bob@example.org')!r})\n"
        "try:\n"
        f"    print('result', kc.request_task(task_type='calculation', task_name={name!r}, task_input={task_input!r},"
        f" timeout_sec=60, project_id={kc.get_project_id()!r}))\n"
        "except kc.TaskError as e:\n"
        "    print('TaskError', e.remote_type)\n"
    )
    return run_python(code, env={"KACHERY_CLOUD_DIR": str(tmp_path / "bob")}).stdout


def show_panel(page: Page, lab: JupyterLab, hub: HubProcess, tmp_path: Path, name: str) -> Locator:
    kernel = lab.add_kernel({
        "KACHERY_CLOUD_DIR": str(tmp_path / f"kernel-{name}"),
        "KACHERY_HUB_URL": hub.url,
        "KACHERY_HUB_TOKEN": hub.token("ada@example.org"),
    })
    lab.write_notebook(f"{name}.ipynb", CELLS, kernel=kernel)
    open_notebook(page, lab, f"{name}.ipynb")
    run_cell(page, 0)
    assert "serving calculation mean_rate(spike_times, duration)" in run_cell(page, 1)
    assert "serving calculation check_units(unit)" in run_cell(page, 2)
    run_cell(page, 3)
    panel = page.locator(".kc-tasks")
    expect(panel).to_be_visible()
    return panel


def test_requests_from_another_process_appear_live(jupyterlab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path) -> None:
    panel = show_panel(page, jupyterlab, ada, tmp_path, "tasks-live")
    expect(panel.locator(".kc-task-status")).to_have_text("live")
    expect(panel.locator(".kc-task-section").first).to_have_text("Handlers online: 2 on 1 backend")
    backend = panel.locator(".kc-task-backend")
    expect(backend.locator(".kc-task-backend-label")).to_contain_text("(this kernel)")
    expect(backend.locator(".kc-task-handler")).to_have_text(["check_units", "mean_rate"])
    expect(backend.locator(".kc-task-heartbeat")).to_contain_text("heartbeat ")
    expect(panel.locator(".kc-task-empty")).to_have_text("No jobs yet.")

    # Requested by another process: served by the notebook's kernel, and the panel shows it by itself.
    assert "result 1.5" in request_elsewhere(ada, tmp_path, "mean_rate", {"spike_times": [1, 2, 3], "duration": 2})
    row = panel.locator(f'{JOB}[data-status="finished"]')
    expect(row).to_be_visible(timeout=LIVE_MS)
    expect(row.locator(".kc-task-name")).to_have_text("mean_rate")
    expect(row.locator(".kc-task-by")).to_have_text("bob@example.org")
    expect(row.locator(".kc-task-duration")).to_have_text(DURATION)
    expect(panel.locator(".kc-task-count")).to_have_text("1 finished")

    assert "TaskError ValueError" in request_elsewhere(ada, tmp_path, "check_units", {"unit": "s"})
    failed = panel.locator(f'{JOB}[data-status="error"]')
    expect(failed).to_be_visible(timeout=LIVE_MS)
    expect(failed.locator(".kc-task-note")).to_contain_text(f"ValueError: unknown unit 's' {EVIL}")
    expect(panel.locator(".kc-task-count")).to_have_text("1 error · 1 finished")
    failed.click()
    trace = panel.locator(".kc-task-traceback")
    expect(trace).to_be_visible()
    expect(trace).to_contain_text("raise ValueError('unknown unit ' + repr(unit)")
    expect(panel.locator(".kc-task-error")).to_contain_text(EVIL)
    assert panel.locator("img").count() == 0, "values are text, never markup"
    screenshot(panel, "task-panel")

    panel.locator(".kc-task-filter").fill("mean")
    expect(panel.locator(".kc-task-count")).to_have_text("1 of 2 match")
    expect(panel.locator(JOB)).to_have_count(1)


# ---------------------------------------------------------------- themes

@pytest.mark.parametrize("themed_lab", list(THEMES), indirect=True)
def test_the_panel_is_readable_in_jupyterlab_s_light_and_dark_themes(
    themed_lab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    theme = request.node.callspec.params["themed_lab"]
    panel = show_panel(page, themed_lab, ada, tmp_path, f"tasks-{theme}")
    assert page.evaluate("document.body.dataset.jpThemeLight") == ("true" if theme == "light" else "false")
    request_elsewhere(ada, tmp_path, "mean_rate", {"spike_times": [1, 2], "duration": 4})
    request_elsewhere(ada, tmp_path, "check_units", {"unit": "kg"})
    expect(panel.locator(JOB)).to_have_count(2, timeout=LIVE_MS)
    panel.locator(f'{JOB}[data-status="error"]').click()
    expect(panel.locator(".kc-task-traceback")).to_be_visible()
    low = too_low(panel)
    assert not low, f"{theme}: text below {AA}:1 against its background: {low}"
    background = panel.evaluate("v => getComputedStyle(v).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (theme == "light"), background
    screenshot(panel, f"task-panel-{theme}")
