"""Time until the live feed viewer in a browser shows a message appended by another process.

One run, on loopback: a ``kachery-hub serve`` process (SQLite), JupyterLab with a
kernel showing ``FeedViewer`` on a feed, headless Chromium on that notebook, and
a separate *appender* process (its own key, signed in) that appends one message
every ``--interval`` seconds and notes the time just before each append. For
every message three moments are measured, all on this machine's epoch clock:

- **viewer**: the browser frame that first draws the message's row (a
  MutationObserver on the viewer's rows, timed in the next requestAnimationFrame);
- anchor (a) **kernel**: the kernel hands the message's batch to the comm (the
  viewer's ``send``), i.e. hub → follower in the kernel, before Jupyter's
  messaging and the browser;
- anchor (b) **bare SSE page**: the same appender rhythm, pushing to the bare
  FastAPI SSE app of :mod:`bench_feeds_anchor` on uvicorn, received by an
  ``EventSource`` in a blank page of the same browser (no hub, no Jupyter).

Aim: viewer p50 ≤ 100 ms. Ratios viewer/kernel and viewer/bare SSE page are printed.

Run: ``.venv/bin/python bench/bench_feed_viewer.py [--messages 50] [--warmup 5] [--interval 0.15]``.
Needs Chromium (``/usr/bin/chromium``, or ``KACHERY_TEST_CHROMIUM``) and JupyterLab, as the e2e tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from _report import fmt, format_table, load_line, save_results
from bench_hub_common import HERE, Hub, client_env, free_port, percentile, sign_in, stop, wait_http

sys.path.insert(0, str(HERE.parent / "tests"))  # the e2e harness: JupyterLab and Chromium as the tests run them

EMAIL = "bench@example.org"
AIM_P50_MS = 100.0

APPENDER = textwrap.dedent("""
    import json, random, sys, time
    mode, target, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if mode == "feed":
        import kachery_core as kc
        feed = kc.load_feed(target)
        send = lambda i: feed.append_message({"bench": i, "pad": "x" * 64})
    else:
        import httpx2
        client = httpx2.Client(base_url=target)
        send = lambda i: client.post("/push", content=json.dumps({"k": i}).encode())
    for i in range(count):
        time.sleep(interval * random.uniform(0.5, 1.5))  # not in step with the page's frames
        before = time.time()
        send(i)
        print(i, repr(before), flush=True)
""")

VIEWER_CELL = """\
import os, time
import kachery_core as kc
from kachery_jupyter import FeedViewer
viewer = FeedViewer(kc.load_feed({uri!r}))
_send, _log = viewer.send, open(os.environ["BENCH_KERNEL_LOG"], "a", buffering=1)
def _timed_send(content, buffers=None):
    if content.get("type") == "messages":
        now = time.time()
        _log.write("".join(f"{{row[0]}} {{now!r}}\\n" for row in content["rows"]))
    _send(content, buffers)
viewer.send = _timed_send
viewer"""

# Each row's first frame: the observer runs after the DOM change, the frame callback just before it is painted.
OBSERVE_ROWS_JS = """(rows) => {
  window.__seen = {};
  new MutationObserver(() => {
    const fresh = [...rows.children].map((r) => r.dataset.number).filter((n) => !(n in window.__seen));
    for (const n of fresh) window.__seen[n] = null;
    requestAnimationFrame(() => {
      const t = (performance.timeOrigin + performance.now()) / 1000; // epoch seconds, as Python's time.time()
      for (const n of fresh) window.__seen[n] = t;
    });
  }).observe(rows, { childList: true });
}"""

LISTEN_SSE_JS = """() => new Promise((resolve) => {
  window.__got = {};
  const source = new EventSource("/events");
  source.onopen = () => resolve(true);
  source.addEventListener("messages", (e) => {
    const k = JSON.parse(e.data).k;
    requestAnimationFrame(() => { window.__got[k] = (performance.timeOrigin + performance.now()) / 1000; });
  });
})"""


def run_appender(mode: str, target: str, count: int, interval: float, env: dict[str, str]) -> dict[int, float]:
    out = subprocess.run([sys.executable, "-c", APPENDER, mode, target, str(count), str(interval)],
                         env=env, capture_output=True, text=True, check=True, timeout=60 + count * interval * 3)
    return {int(n): float(t) for n, t in (line.split() for line in out.stdout.splitlines())}


def latencies_ms(sent: dict[int, float], seen: dict[Any, Any], skip: int) -> list[float]:
    """Milliseconds from each append to its sighting; ``seen`` is keyed by number (int, or str from a page)."""
    at = {int(n): t for n, t in seen.items() if t is not None}
    missing = [n for n in sent if n not in at]
    if missing:
        raise RuntimeError(f"never seen: messages {missing[:10]}")
    return [(float(at[n]) - t) * 1000 for n, t in sorted(sent.items()) if n >= skip]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "max_ms": max(values),
            "n": len(values)}


def measure(work: Path, count: int, warmup: int, interval: float) -> dict[str, dict[str, float]]:
    from playwright.sync_api import expect, sync_playwright

    from e2e.notebook import open_notebook, run_cell
    from e2e.servers import CHROMIUM, CHROMIUM_ARGS, start_jupyterlab

    if not CHROMIUM.exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (bash dev.sh test does)")
    hub = Hub(work / "hub-data")
    hub.start()
    anchor = None
    try:
        me, appender = work / "me", work / "appender"
        sign_in(me, hub.url, hub.token(EMAIL))
        sign_in(appender, hub.url, hub.token(EMAIL))
        os.environ.update(client_env(me, hub.url))
        import kachery_core as kc

        feed = kc.create_feed(label="viewer latency")
        anchor_port = free_port()
        anchor = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE), "bench_feeds_anchor:feed_anchor_app",
             "--host", "127.0.0.1", "--port", str(anchor_port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        anchor_url = f"http://127.0.0.1:{anchor_port}"
        wait_http(anchor_url + "/health", anchor)

        kernel_log = work / "kernel-sends.log"
        total = warmup + count
        with start_jupyterlab(work / "lab") as lab, sync_playwright() as p:
            kernel = lab.add_kernel({"KACHERY_CLOUD_DIR": str(work / "kernel"), "KACHERY_HUB_URL": hub.url,
                                     "KACHERY_HUB_TOKEN": hub.token(EMAIL), "BENCH_KERNEL_LOG": str(kernel_log)})
            lab.write_notebook("viewer.ipynb", ["%load_ext kachery_jupyter", VIEWER_CELL.format(uri=feed.uri)],
                               kernel=kernel)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)

            # (b) the bare page first: one EventSource, same browser, no Jupyter.
            bare = browser.new_page()
            bare.goto(anchor_url + "/health")
            bare.evaluate(LISTEN_SSE_JS)
            sent_bare = run_appender("anchor", anchor_url, total, interval, client_env(appender, hub.url))
            bare.wait_for_function(f"Object.keys(window.__got).length >= {total}", timeout=30_000)
            got_bare = bare.evaluate("window.__got")
            bare.close()

            # The viewer, and the kernel's hand-over times of the same messages.
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.bring_to_front()  # a page in the background gets no animation frames
            open_notebook(page, lab, "viewer.ipynb")
            run_cell(page, 0)
            run_cell(page, 1)
            expect(page.locator(".kc-feed .kc-feed-count")).to_have_text("0 messages")
            page.locator(".kc-feed .kc-feed-rows").evaluate(OBSERVE_ROWS_JS)
            sent = run_appender("feed", feed.uri, total, interval, client_env(appender, hub.url))
            page.wait_for_function(
                f"Object.values(window.__seen).filter((t) => t !== null).length >= {total}", timeout=30_000)
            seen = page.evaluate("window.__seen")
            browser.close()
        kernel_seen = {int(n): float(t) for n, t in (line.split() for line in kernel_log.read_text().splitlines())}
        return {
            "viewer (browser row drawn)": summary(latencies_ms(sent, seen, warmup)),
            "anchor (a) kernel hands the batch to the comm": summary(latencies_ms(sent, kernel_seen, warmup)),
            "anchor (b) bare SSE page (uvicorn, EventSource)": summary(latencies_ms(sent_bare, got_bare, warmup)),
        }
    finally:
        stop(anchor)
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50, help="measured appends (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="appends before those, not counted (default 5)")
    parser.add_argument("--interval", type=float, default=0.15, help="mean seconds between appends (default 0.15)")
    args = parser.parse_args()
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="bench-feed-viewer-", dir=os.environ.get("BENCH_TMP")))
    try:
        results = measure(work, args.messages, args.warmup, args.interval)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    viewer = results["viewer (browser row drawn)"]
    rows = []
    for name, r in results.items():
        rows.append([name, fmt(r["p50_ms"], ".1f"), fmt(r["p99_ms"], ".1f"), fmt(r["max_ms"], ".1f"),
                     fmt(viewer["p50_ms"] / r["p50_ms"], ".2f"), fmt(viewer["p99_ms"] / r["p99_ms"], ".2f")])
    print(f"\nappend in another process -> seen, {args.messages} messages after {args.warmup} warm-up:\n")
    print(format_table(["", "p50 ms", "p99 ms", "max ms", "viewer/this p50", "viewer/this p99"], rows))
    verdict = "met" if viewer["p50_ms"] <= AIM_P50_MS else "NOT met"
    print(f"\naim viewer p50 <= {AIM_P50_MS:.0f} ms: {verdict} ({viewer['p50_ms']:.1f} ms)")
    save_results("feed_viewer", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
