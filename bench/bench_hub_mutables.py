"""``get_mutable`` / ``set_mutable`` latency against a real hub, beside a bare FastAPI JSON round trip.

Both servers run in the same run on loopback: a ``kachery-hub serve`` process
(SQLite + folder) and the bare FastAPI app of :mod:`bench_hub_anchor` on uvicorn.
This process is one signed-in client (its own KACHERY_CLOUD_DIR) and times, one
call after the other, N rounds of: anchor ``PUT /json/{key}``, ours
``set_mutable``, anchor ``GET /json/{key}``, ours ``get_mutable``. Interleaving
puts both under the same machine load. The anchor uses the HTTP library ours
uses (an httpx2 ``Client``, keep-alive), so the difference is the hub's work:
signing and checking the request, the permission lookup and the SQLite write.

Aim: ours at most 3x the anchor, p50 and p99.

Run: ``.venv/bin/python bench/bench_hub_mutables.py [--calls 500] [--warmup 20]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import format_table, load_line, save_results
from bench_hub_common import Anchor, Hub, percentile

EMAIL = "bench@example.org"
KEY = "bench/latest"
VALUE = "sha1://0123456789abcdef0123456789abcdef01234567?label=result.json"
AIM_RATIO = 3.0

ANCHOR_PUT = "anchor PUT /json/{key} (FastAPI)"
OURS_SET = "ours set_mutable"
ANCHOR_GET = "anchor GET /json/{key} (FastAPI)"
OURS_GET = "ours get_mutable"
PAIRS = {OURS_SET: ANCHOR_PUT, OURS_GET: ANCHOR_GET}

Call = Callable[[], Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=500, help="timed calls of each kind (default 500)")
    p.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default 20)")
    return p.parse_args(argv)


def contenders(hub: Hub, anchor: Anchor, client_dir: Path) -> tuple[dict[str, Call], Call]:
    """The four calls, ready to time, and a function closing their connections."""
    import httpx2

    # kachery_core reads these at call time; this process is the client computer.
    os.environ["KACHERY_CLOUD_DIR"] = str(client_dir)
    for name in ("KACHERY_HUB_URL", "KACHERY_HUB_TOKEN", "KACHERY_CLOUD_PROJECT", "KACHERY_CLOUD_EPHEMERAL"):
        os.environ.pop(name, None)
    import kachery_core as kc
    from kachery_core import _hub

    kc.init(hub_url=hub.url, token=hub.token(EMAIL))
    http = httpx2.Client(timeout=30)
    url = f"{anchor.url}/json/{KEY}"

    def anchor_put() -> None:
        http.put(url, json={"value": VALUE}).raise_for_status()

    def anchor_get() -> str:
        r = http.get(url)
        r.raise_for_status()
        return str(r.json()["value"])

    def close() -> None:
        http.close()
        _hub.close_connections()

    calls: dict[str, Call] = {
        ANCHOR_PUT: anchor_put,
        OURS_SET: lambda: kc.set_mutable(KEY, VALUE),
        ANCHOR_GET: anchor_get,
        OURS_GET: lambda: kc.get_mutable(KEY),
    }
    return calls, close


def measure(calls: dict[str, Call], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call, ``rounds`` of each, interleaved; the first ``warmup`` rounds are dropped."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            value = call()
            elapsed = time.perf_counter() - start
            if name in (OURS_GET, ANCHOR_GET) and value != VALUE:
                raise RuntimeError(f"{name} returned {value!r}")
            if i >= warmup:
                seconds[name].append(elapsed)
    return seconds


def summarize(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"p50_us": percentile(v, 50) * 1e6, "p99_us": percentile(v, 99) * 1e6,
               "mean_us": statistics.fmean(v) * 1e6, "max_us": max(v) * 1e6}
        for name, v in seconds.items()
    }


def table(summary: dict[str, dict[str, float]]) -> str:
    rows = []
    for name, s in summary.items():
        anchor = summary[PAIRS[name]] if name in PAIRS else None
        ratios = [f"{s['p50_us'] / anchor['p50_us']:.2f}", f"{s['p99_us'] / anchor['p99_us']:.2f}"] if anchor else ["", ""]
        rows.append([name, f"{s['p50_us']:,.0f}", f"{s['p99_us']:,.0f}", f"{s['mean_us']:,.0f}", *ratios])
    return format_table(["call", "p50 µs", "p99 µs", "mean µs", "ours/anchor p50", "ours/anchor p99"], rows)


def aims(summary: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for ours, anchor in PAIRS.items():
        for q in ("p50_us", "p99_us"):
            ratio = summary[ours][q] / summary[anchor][q]
            lines.append(f"{ours} / {anchor} {q[:3]} = {ratio:.2f} (aim <= {AIM_RATIO:g})")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-hub-mutables-", dir=os.environ.get("BENCH_TMP")))
    hub, anchor = Hub(work / "hub"), Anchor(work / "anchor")
    try:
        hub.start()
        anchor.start()
        calls, close = contenders(hub, anchor, work / "client")
        try:
            seconds = measure(calls, args.calls, args.warmup)
        finally:
            close()
    finally:
        hub.stop()
        anchor.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(seconds)
    print(f"\n{args.calls} sequential calls of each (after {args.warmup} warm-up rounds), interleaved, "
          "one keep-alive connection per server")
    print(table(summary))
    aim_lines = aims(summary)
    print("\n" + "\n".join(aim_lines))
    save_results("hub_mutables", {
        "calls": args.calls, "warmup": args.warmup, "summary": summary, "seconds": seconds, "aims": aim_lines,
    })


if __name__ == "__main__":
    main()
