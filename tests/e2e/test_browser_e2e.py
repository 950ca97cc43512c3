"""The project browser in JupyterLab in headless Chromium, against a real hub process.

The 100,000 files of the long-project test are inserted as rows straight into the
hub's SQLite database (uploading them one by one would take minutes); the browser
only lists them, it never reads their bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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
ROW = ".kc-browser-rows .kc-browser-row"


@pytest.fixture
def ada(real_hub: HubProcess) -> HubProcess:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    return real_hub


def png(width: int, height: int) -> bytes:
    """A small gradient as a PNG file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
                   for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def insert_files(hub: HubProcess, project_id: str, email: str, count: int) -> None:
    """``count`` file rows in the hub's database (a project that grew over years), in one transaction."""
    con = sqlite3.connect(hub.data / "hub.sqlite", timeout=30)
    try:
        user_id = con.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()[0]
        now = time.time()
        rows = []
        for i in range(count):
            sha1 = hashlib.sha1(f"file {i}".encode()).hexdigest()
            rows.append((project_id, sha1, 1000 + i, f"session_{i:06d}.nwb", user_id, now - i))
        with con:
            con.executemany("INSERT INTO blobs (sha1, size, created_at) VALUES (?, ?, ?)",
                            [(r[1], r[2], r[5]) for r in rows])
            con.executemany("INSERT INTO files (project_id, sha1, size, label, created_by, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()


def browser_notebook(lab: JupyterLab, hub: HubProcess, tmp_path: Path, name: str, extra: list[str] | None = None) -> str:
    kernel = lab.add_kernel({
        "KACHERY_CLOUD_DIR": str(tmp_path / f"kernel-{name}"),
        "KACHERY_HUB_URL": hub.url,
        "KACHERY_HUB_TOKEN": hub.token("ada@example.org"),
    })
    lab.write_notebook(f"{name}.ipynb", ["%load_ext kachery_jupyter", "%kc_browse", *(extra or [])], kernel=kernel)
    return f"{name}.ipynb"


def show_browser(page: Page, lab: JupyterLab, notebook: str) -> Locator:
    open_notebook(page, lab, notebook)
    run_cell(page, 0)
    run_cell(page, 1)
    browser = page.locator(".kc-browser")
    expect(browser).to_be_visible()
    return browser


def labels(browser: Locator) -> list[str]:
    return [str(x) for x in browser.locator(f"{ROW} .kc-col-label").all_text_contents()]


def test_browse_search_preview_copy_load_and_change_a_member(
    jupyterlab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path
) -> None:
    pid = kc.get_project_id()
    kc.store_npy(np.arange(600, dtype=np.int32).reshape(20, 30), label="spikes_session3.npy")
    kc.store_json({"subject": "M12", "channels": [{"id": i, "depth_um": 20 * i} for i in range(4)]}, label="meta.json")
    kc.store_text("electrode impedances ok\n", label=f"notes {EVIL}.txt")
    picture = tmp_path / "probe.png"
    picture.write_bytes(png(64, 40))
    kc.store_file(str(picture), label="probe.png")
    kc.set_mutable("sessions/latest", "sha1://0000000000000000000000000000000000000000?label=x")
    kc.set_mutable("sessions/2024/a", EVIL)
    kc.create_feed(label="acquisition").append_message({"n": 1})
    run_python(f"import kachery_core as kc; kc.init(hub_url={ada.url!r}, token={ada.token('bob@example.org')!r})",
               env={"KACHERY_CLOUD_DIR": str(tmp_path / "bob")})
    kc.set_project_member(pid, "bob@example.org", "read")

    notebook = browser_notebook(jupyterlab, ada, tmp_path, "browse",
                                ["print(type(spikes).__name__, spikes.shape, int(spikes.sum()))"])
    browser = show_browser(page, jupyterlab, notebook)
    expect(browser.locator(".kc-browser-count")).to_have_text("4 files")
    assert sorted(labels(browser)) == sorted(["spikes_session3.npy", "meta.json", f"notes {EVIL}.txt", "probe.png"])
    assert browser.locator("img").count() == 0, "labels are text, never markup"
    expect(browser.locator(".kc-browser-project")).to_contain_text("(admin)")

    # Search (done by the hub), then a click previews: shape, dtype, first rows.
    browser.locator(".kc-browser-search").fill("SPIKES")
    expect(browser.locator(".kc-browser-count")).to_have_text("1 match")
    browser.locator(ROW).first.click()
    preview = browser.locator(".kc-browser-preview")
    expect(preview).to_contain_text("array shape (20, 30) dtype int32")
    expect(preview.locator("pre")).to_contain_text("[[  0   1   2")

    # Copy the URI.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    browser.get_by_role("button", name="Copy URI").click()
    expect(browser.locator(".kc-browser-message")).to_have_text("URI copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("sha1://") and copied.endswith("?label=spikes_session3.npy")

    # Load into a variable: a bad name is refused, a good one is assigned in the kernel.
    name = browser.locator(".kc-browser-varname")
    expect(name).to_have_value("spikes_session3")
    name.fill("2 bad")
    browser.get_by_role("button", name="Load into variable").click()
    expect(browser.locator(".kc-browser-message")).to_contain_text("not a valid Python variable name")
    name.fill("spikes")
    name.press("Enter")
    expect(browser.locator(".kc-browser-message")).to_have_text("spikes = ndarray")
    assert run_cell(page, 2).strip() == f"ndarray (20, 30) {sum(range(600))}"

    # Keyboard: arrows move the selection, Enter previews (the JSON is collapsible).
    browser.locator(".kc-browser-search").fill("")
    expect(browser.locator(".kc-browser-count")).to_have_text("4 files")
    listing = browser.locator(".kc-browser-list")
    listing.focus()
    index = labels(browser).index("meta.json")
    for _ in range(index + 1):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(browser.locator(".kc-selected .kc-col-label")).to_have_text("meta.json")
    channels = preview.locator("details details").first
    expect(channels.locator("summary").first).to_have_text("channels: [4]")
    assert channels.evaluate("d => d.open") is False
    channels.locator("summary").first.click()
    expect(channels).to_contain_text("depth_um: 60")

    # An image preview, made in the kernel as a data URL.
    browser.locator(ROW).filter(has_text="probe.png").click()
    image = preview.locator("img.kc-browser-image")
    expect(image).to_be_visible()
    assert image.evaluate("i => i.naturalWidth") == 64
    screenshot(browser, "browser")

    # Text preview with markup in it stays text.
    browser.locator(ROW).filter(has_text="notes").click()
    expect(preview).to_contain_text("electrode impedances ok")

    # Mutables as a tree; the value as text.
    browser.get_by_role("tab", name="Mutables").click()
    browser.locator("summary", has_text="sessions/").click()
    browser.locator("summary", has_text="2024/").click()
    browser.locator('.kc-tree-leaf[data-key="sessions/2024/a"]').click()
    expect(browser.locator(".kc-browser-mutable-value pre")).to_have_text(EVIL)
    assert browser.locator("img").count() == 0
    screenshot(browser, "browser-mutables")

    # Members: the admin changes bob's role; the hub has it.
    browser.get_by_role("tab", name="Members").click()
    role = browser.get_by_label("role of bob@example.org")
    expect(role).to_have_value("read")
    role.select_option("write")
    expect(browser.get_by_label("role of bob@example.org")).to_have_value("write")
    assert {m["email"]: m["role"] for m in kc.list_project_members(pid)}["bob@example.org"] == "write"
    screenshot(browser, "browser-members")

    # Feeds: the live viewer opens below the browser.
    browser.get_by_role("tab", name="Feeds").click()
    browser.get_by_role("button", name="Open live viewer").click()
    expect(browser.locator(".kc-feed .kc-feed-title")).to_contain_text("acquisition", timeout=20_000)
    expect(browser.locator(".kc-feed .kc-feed-count")).to_have_text("1 message")


def test_100000_files_page_from_the_hub_and_keep_the_dom_small(
    jupyterlab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path
) -> None:
    total = 100_000
    insert_files(ada, kc.get_project_id(), "ada@example.org", total)
    browser = show_browser(page, jupyterlab, browser_notebook(jupyterlab, ada, tmp_path, "browse-100k"))
    count = browser.locator(".kc-browser-count")
    expect(count).to_have_text("200+ files")
    rows = browser.locator(ROW)
    assert 0 < rows.count() < 40
    listing = browser.locator(".kc-browser-list")
    for _ in range(5):  # each scroll to the end asks the hub for the next page
        before = listing.evaluate("el => el.scrollHeight")
        listing.evaluate("el => { el.scrollTop = el.scrollHeight; }")
        page.wait_for_function("([el, h]) => el.scrollHeight > h", arg=[listing.element_handle(), before])
        assert 0 < rows.count() < 40, f"{rows.count()} rows in the DOM"
    expect(count).to_have_text("1,200+ files")
    listing.hover()
    page.mouse.wheel(0, -3_000)
    assert 0 < rows.count() < 40
    screenshot(browser, "browser-100k")

    browser.locator(".kc-browser-search").fill("session_077777")
    expect(count).to_have_text("1 match")
    assert labels(browser) == ["session_077777.nwb"]
    browser.locator(".kc-browser-search").fill("session_0777")
    expect(count).to_have_text("100 matches")


@pytest.mark.parametrize("themed_lab", list(THEMES), indirect=True)
def test_the_browser_is_readable_in_jupyterlab_s_light_and_dark_themes(
    themed_lab: JupyterLab, page: Page, ada: HubProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    theme = request.node.callspec.params["themed_lab"]
    for i in range(12):
        kc.store_text(f"trace {i}\n" * 20, label=f"trace_{i:02d}.txt")
    browser = show_browser(page, themed_lab, browser_notebook(themed_lab, ada, tmp_path, f"browse-{theme}"))
    light = page.evaluate("document.body.dataset.jpThemeLight")
    assert light == ("true" if theme == "light" else "false"), "JupyterLab did not take the theme"
    expect(browser.locator(".kc-browser-count")).to_have_text("12 files")
    browser.locator(ROW).nth(2).click()
    expect(browser.locator(".kc-browser-preview pre")).to_contain_text("trace")
    low = too_low(browser)
    assert not low, f"{theme}: text below {AA}:1 against its background: {low}"
    background = browser.evaluate("v => getComputedStyle(v).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (theme == "light"), background
    screenshot(browser, f"browser-{theme}")
