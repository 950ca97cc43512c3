"""The project browser with 100,000 files: first page, next page and a search, from the kernel.

One run, on loopback: a ``kachery-hub serve`` process (SQLite) whose project holds
``--files`` file rows (inserted straight into its database: uploading 100,000 files
would take minutes and the browser only lists them). Timed, ``--repeat`` times each:

- **kernel**: :meth:`ProjectBrowser.answer` for a request as ``js/browser.js`` sends it
  (the first page; the page after it; a search matching one label; a search matching
  100), i.e. what the kernel does between the front end's message and its answer;
- anchor (a) **hub listing**: the same signed GET of ``/api/projects/{id}/files`` straight
  from the client (no widget layer);
- anchor (b) **hub health**: an unsigned ``GET /api/health`` round trip, the floor of any
  JSON answer from this hub.

With ``--browser`` also the **first paint** in JupyterLab in headless Chromium: from the
browser's root element appearing in the page to its first file row drawn (a
MutationObserver, timed in the next animation frame), and from running the cell.

Aims: each kernel p50 <= 200 ms; first paint <= 500 ms.

Run: ``.venv/bin/python bench/bench_browser.py [--files 100000] [--repeat 30] [--browser]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import fmt, format_table, load_line, save_results
from bench_hub_common import HERE, Hub, client_env, percentile, sign_in

sys.path.insert(0, str(HERE.parent / "tests"))  # the e2e harness, for --browser

EMAIL = "bench@example.org"
AIM_KERNEL_MS = 200.0
AIM_PAINT_MS = 500.0

OBSERVE_JS = """() => new Promise((resolve) => {
  const t0 = performance.now();
  window.__paint = null;
  const seen = () => {
    const root = document.querySelector('.kc-browser');
    if (root && window.__root === undefined) window.__root = performance.now();
    if (document.querySelector('.kc-browser-rows .kc-browser-row')) {
      obs.disconnect();
      requestAnimationFrame(() => { window.__paint = {root: window.__root, row: performance.now(), t0}; });
    }
  };
  const obs = new MutationObserver(seen);
  obs.observe(document.body, {childList: true, subtree: true});
  resolve(t0);
})"""


def insert_files(db: Path, project_id: str, count: int) -> None:
    con = sqlite3.connect(db, timeout=30)
    try:
        user_id = con.execute("SELECT id FROM users WHERE email = ?", (EMAIL,)).fetchone()[0]
        now = time.time()
        rows = [(project_id, hashlib.sha1(f"file {i}".encode()).hexdigest(), 1000 + i, f"session_{i:06d}.nwb", user_id,
                 now - i) for i in range(count)]
        with con:
            con.executemany("INSERT INTO blobs (sha1, size, created_at) VALUES (?, ?, ?)", [(r[1], r[2], r[5]) for r in rows])
            con.executemany("INSERT INTO files (project_id, sha1, size, label, created_by, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm: connections open, statements prepared
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 95), "max_ms": max(ms), "n": len(ms)}


def measure_kernel(hub: Hub, files: int, repeat: int, label_index: bool = False) -> dict[str, dict[str, float]]:
    import httpx2

    import kachery_core as kc
    from kachery_core import _hub
    from kachery_jupyter import ProjectBrowser

    pid = kc.get_project_id()
    insert_files(hub.data / "hub.sqlite", pid, files)
    if not label_index:  # the hub's covering index of labels (migration 8) dropped: what a search costs without
        with sqlite3.connect(hub.data / "hub.sqlite", timeout=30) as con:
            con.execute("DROP INDEX IF EXISTS files_labels")
    browser = ProjectBrowser()

    def ask(**request: Any) -> dict[str, Any]:
        answer = browser.answer({"type": "request", "id": 1, **request})
        assert answer["ok"], answer
        result: dict[str, Any] = answer["result"]
        return result

    first = ask(op="files", project_id=pid, q="")
    assert len(first["files"]) == browser.page_size and first["next"], first["next"]
    assert len(ask(op="files", project_id=pid, q="session_0777")["files"]) == 100
    assert [f["label"] for f in ask(op="files", project_id=pid, q="session_077777")["files"]] == ["session_077777.nwb"]
    client = _hub.connect("bench")
    path = f"/api/projects/{pid}/files"
    limit = browser.page_size + 1
    health = httpx2.Client(base_url=hub.url)
    results = {
        "kernel: first page": timed(lambda: ask(op="files", project_id=pid, q=""), repeat),
        "kernel: next page": timed(lambda: ask(op="files", project_id=pid, q="", after=first["next"]), repeat),
        "kernel: search, 1 match": timed(lambda: ask(op="files", project_id=pid, q="session_077777"), repeat),
        "kernel: search, 100 matches": timed(lambda: ask(op="files", project_id=pid, q="session_0777"), repeat),
        "anchor (a) hub listing, first page": timed(lambda: client.json("GET", path, params={"limit": limit}), repeat),
        "anchor (a) hub listing, search 1": timed(
            lambda: client.json("GET", path, params={"limit": limit, "q": "session_077777"}), repeat),
        "anchor (b) hub health (unsigned)": timed(lambda: health.get("/api/health").json(), repeat),
    }
    health.close()
    browser.close()
    return results


def measure_paint(work: Path, hub: Hub, repeat: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import expect, sync_playwright

    from e2e.notebook import open_notebook, run_cell, wait_idle
    from e2e.servers import CHROMIUM, CHROMIUM_ARGS, start_jupyterlab

    if not CHROMIUM.exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (bash dev.sh test does)")
    root_ms, cell_ms = [], []
    with start_jupyterlab(work / "lab") as lab, sync_playwright() as p:
        kernel = lab.add_kernel({"KACHERY_CLOUD_DIR": str(work / "kernel"), "KACHERY_HUB_URL": hub.url,
                                 "KACHERY_HUB_TOKEN": hub.token(EMAIL)})
        lab.write_notebook("browse.ipynb", ["%load_ext kachery_jupyter", "%kc_browse"], kernel=kernel)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.bring_to_front()
        open_notebook(page, lab, "browse.ipynb")
        run_cell(page, 0)
        for i in range(repeat + 1):
            page.evaluate("() => { window.__root = undefined; window.__paint = null; }")
            page.evaluate(OBSERVE_JS)
            run_cell(page, 1)
            page.wait_for_function("window.__paint !== null", timeout=30_000)
            paint = page.evaluate("window.__paint")
            expect(page.locator(".kc-browser-count")).to_have_text("200+ files")
            wait_idle(page)
            if i:  # the first run loads the widget's module
                root_ms.append(paint["row"] - paint["root"])
                cell_ms.append(paint["row"] - paint["t0"])
        browser.close()

    def summary(ms: list[float]) -> dict[str, float]:
        return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 95), "max_ms": max(ms), "n": len(ms)}

    return {"browser: first paint (root shown -> first row)": summary(root_ms),
            "browser: cell run -> first row": summary(cell_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="file rows in the project (default 100,000)")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests of each kind (default 30)")
    parser.add_argument("--browser", action="store_true", help="also time the first paint in JupyterLab + Chromium")
    parser.add_argument("--no-label-index", dest="label_index", action="store_false",
                        help="drop the hub's index of file labels (migration 8) first: what a search costs without it")
    parser.add_argument("--paints", type=int, default=5, help="first paints timed with --browser (default 5)")
    args = parser.parse_args()
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="bench-browser-", dir=os.environ.get("BENCH_TMP")))
    hub = Hub(work / "hub-data")
    hub.start()
    try:
        me = work / "me"
        sign_in(me, hub.url, hub.token(EMAIL))
        os.environ.update(client_env(me, hub.url))
        results = measure_kernel(hub, args.files, args.repeat, args.label_index)
        if args.browser:
            results.update(measure_paint(work, hub, args.paints))
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [[name, fmt(r["p50_ms"], ".1f"), fmt(r["p95_ms"], ".1f"), fmt(r["max_ms"], ".1f"), str(r["n"])]
            for name, r in results.items()]
    print(f"\n{args.files:,} files in the project:\n")
    print(format_table(["", "p50 ms", "p95 ms", "max ms", "n"], rows))
    worst = max(r["p50_ms"] for name, r in results.items() if name.startswith("kernel"))
    print(f"\naim kernel p50 <= {AIM_KERNEL_MS:.0f} ms: {'met' if worst <= AIM_KERNEL_MS else 'NOT met'} "
          f"(slowest {worst:.1f} ms)")
    paint = results.get("browser: first paint (root shown -> first row)")
    if paint:
        print(f"aim first paint <= {AIM_PAINT_MS:.0f} ms: {'met' if paint['p50_ms'] <= AIM_PAINT_MS else 'NOT met'} "
              f"({paint['p50_ms']:.1f} ms)")
    save_results("browser", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
