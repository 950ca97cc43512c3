"""The live feed viewer in JupyterLab in headless Chromium, against a real hub process.

Messages are appended by a separate Python process (another computer, as far as the
viewer can tell); nothing is run in the notebook meanwhile.
"""

from __future__ import annotations

import json
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
ROW = ".kc-feed-row"


@pytest.fixture
def ada(real_hub: HubProcess) -> HubProcess:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    return real_hub


def append_elsewhere(hub: HubProcess, tmp_path: Path, uri: str, messages: list[dict[str, Any]]) -> None:
    """Another process, with its own key (signed in as ada), appends ``messages``."""
    code = (
        "import json, kachery_core as kc\n"
        f"kc.init(hub_url={hub.url!r}, token={hub.token('ada@example.org')!r})\n"
        f"kc.load_feed({uri!r}).append_messages(json.loads({json.dumps(messages)!r}))\n"
    )
    run_python(code, env={"KACHERY_CLOUD_DIR": str(tmp_path / "elsewhere")})


def viewer_notebook(lab: JupyterLab, hub: HubProcess, tmp_path: Path, name: str, uri: str) -> str:
    kernel = lab.add_kernel({
        "KACHERY_CLOUD_DIR": str(tmp_path / f"kernel-{name}"),
        "KACHERY_HUB_URL": hub.url,
        "KACHERY_HUB_TOKEN": hub.token("ada@example.org"),
    })
    lab.write_notebook(f"{name}.ipynb", ["%load_ext kachery_jupyter", f"%kc_feed {uri}"], kernel=kernel)
    return f"{name}.ipynb"


def show_viewer(page: Page, lab: JupyterLab, notebook: str) -> Locator:
    open_notebook(page, lab, notebook)
    run_cell(page, 0)
    run_cell(page, 1)
    viewer = page.locator(".kc-feed")
    expect(viewer).to_be_visible()
    return viewer


def numbers(viewer: Locator) -> list[int]:
    return [int(n) for n in viewer.locator(ROW).evaluate_all("rows => rows.map((r) => r.dataset.number)")]


def count_text(viewer: Locator) -> Locator:
    return viewer.locator(".kc-feed-count")


def test_messages_appear_live_and_the_controls_work(
    jupyterlab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path
) -> None:
    feed = kc.create_feed(label="acquisition M12")
    feed.append_messages([{"step": i, "kind": "spike" if i % 3 == 0 else "tick"} for i in range(6)])
    viewer = show_viewer(page, jupyterlab, viewer_notebook(jupyterlab, ada, tmp_path, "feed-live", feed.uri))
    expect(count_text(viewer)).to_have_text("6 messages")
    assert numbers(viewer) == [5, 4, 3, 2, 1, 0], "newest first"
    expect(viewer.locator(".kc-feed-title")).to_contain_text("acquisition M12")

    # Appended by another process: it appears with no action in the page or the notebook.
    append_elsewhere(ada, tmp_path, feed.uri, [{"step": 6, "kind": "spike", "note": EVIL}])
    expect(viewer.locator(f'{ROW}[data-number="6"]')).to_be_visible(timeout=20_000)
    expect(count_text(viewer)).to_have_text("7 messages")
    row = viewer.locator(f'{ROW}[data-number="6"]')
    expect(row.locator(".kc-feed-user")).to_have_text("ada@example.org")
    expect(row.locator(".kc-feed-json")).to_contain_text(EVIL)
    row.click()
    expect(viewer.locator(".kc-feed-json-full")).to_contain_text('"note": "<img src=x onerror=alert(1)>"')
    assert viewer.locator("img").count() == 0, "values are text, never markup"
    screenshot(viewer, "feed-viewer")
    viewer.get_by_role("button", name="Collapse").click()

    # The filter.
    viewer.locator(".kc-feed-filter").fill("spike")
    expect(count_text(viewer)).to_have_text("3 of 7 match")
    assert numbers(viewer) == [6, 3, 0]
    screenshot(viewer, "feed-viewer-filtered")
    viewer.locator(".kc-feed-filter").fill("")
    expect(count_text(viewer)).to_have_text("7 messages")

    # The order toggle.
    viewer.locator('[data-action="order"]').click()
    expect(viewer.locator('[data-action="order"]')).to_have_text("Oldest first")
    assert numbers(viewer) == [0, 1, 2, 3, 4, 5, 6]
    viewer.locator('[data-action="order"]').click()

    # Pause: what arrives is counted, not shown; resume shows it.
    viewer.get_by_role("button", name="Pause").click()
    append_elsewhere(ada, tmp_path, feed.uri, [{"step": 7}, {"step": 8}])
    expect(count_text(viewer)).to_have_text("7 messages · paused, 2 new", timeout=20_000)
    assert numbers(viewer)[0] == 6
    screenshot(viewer, "feed-viewer-paused")
    viewer.get_by_role("button", name="Resume").click()
    expect(count_text(viewer)).to_have_text("9 messages")
    assert numbers(viewer)[:2] == [8, 7]

    # The append box: this kernel may write.
    viewer.locator(".kc-feed-append-text").fill('{"note": "from the viewer"}')
    viewer.get_by_role("button", name="Append").click()
    expect(viewer.locator(".kc-feed-append-note")).to_have_text("Appended as message #9.")
    expect(viewer.locator(f'{ROW}[data-number="9"]')).to_be_visible()
    viewer.locator(".kc-feed-append-text").fill("[1, 2]")
    viewer.get_by_role("button", name="Append").click()
    expect(viewer.locator(".kc-feed-append-note")).to_contain_text("FeedMessageError: a message is a JSON object")
    assert feed.get_messages(9) == [{"note": "from the viewer"}]


def test_100000_messages_keep_the_dom_small(jupyterlab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path) -> None:
    feed = kc.create_feed(label="long")
    total = 100_000
    for start in range(0, total, 10_000):
        feed.append_messages([{"i": i, "phase": "scan"} for i in range(start, start + 10_000)])
    viewer = show_viewer(page, jupyterlab, viewer_notebook(jupyterlab, ada, tmp_path, "feed-long", feed.uri))
    expect(count_text(viewer)).to_have_text("100,000 messages", timeout=120_000)
    rows = viewer.locator(ROW)
    assert 0 < rows.count() < 200
    assert numbers(viewer)[0] == total - 1

    listing = viewer.locator(".kc-feed-list")
    for fraction in (0.25, 0.5, 0.9):
        listing.evaluate("(el, f) => { el.scrollTop = el.scrollHeight * f; }", fraction)
        expected = round(total - 1 - fraction * total)
        page.wait_for_function(
            "([el, n]) => [...el.querySelectorAll('.kc-feed-row')].some((r) => Math.abs(r.dataset.number - n) < 50)",
            arg=[listing.element_handle(), expected],
        )
        assert 0 < rows.count() < 200, f"{rows.count()} rows in the DOM at {fraction:.0%}"
    listing.hover()
    page.mouse.wheel(0, 5_000)
    viewer.get_by_role("button", name="Start", exact=True).click()
    expect(viewer.locator(f'{ROW}[data-number="0"]')).to_be_visible()
    viewer.get_by_role("button", name="End", exact=True).click()
    expect(viewer.locator(f'{ROW}[data-number="{total - 1}"]')).to_be_visible()
    assert 0 < rows.count() < 200
    screenshot(viewer, "feed-viewer-100k")

    viewer.locator(".kc-feed-filter").fill('"i":77777,')
    expect(count_text(viewer)).to_have_text("1 of 100,000 match")
    assert numbers(viewer) == [77777]


# ---------------------------------------------------------------- themes

@pytest.mark.parametrize("themed_lab", list(THEMES), indirect=True)
def test_the_viewer_is_readable_in_jupyterlab_s_light_and_dark_themes(
    themed_lab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    theme = request.node.callspec.params["themed_lab"]
    feed = kc.create_feed(label=f"{theme} theme")
    feed.append_messages([{"step": i, "status": "ok" if i % 4 else "retry", "values": [i, i * i]} for i in range(40)])
    viewer = show_viewer(page, themed_lab, viewer_notebook(themed_lab, ada, tmp_path, f"feed-{theme}", feed.uri))
    light = page.evaluate("document.body.dataset.jpThemeLight")
    assert light == ("true" if theme == "light" else "false"), "JupyterLab did not take the theme"
    expect(count_text(viewer)).to_have_text("40 messages")
    viewer.locator(f'{ROW}[data-number="36"]').click()
    viewer.locator(".kc-feed-append-text").fill("[]")
    viewer.get_by_role("button", name="Append").click()
    expect(viewer.locator(".kc-feed-append-note")).to_contain_text("FeedMessageError")
    low = too_low(viewer)
    assert not low, f"{theme}: text below {AA}:1 against its background: {low}"
    background = viewer.evaluate("v => getComputedStyle(v).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (theme == "light"), background
    screenshot(viewer, f"feed-viewer-{theme}")
