"""Does storing tell an outsider that another project holds the bytes? Timing, held beside fresh, in one run.

A real ``kachery-hub serve`` process (SQLite + folder). User B stores N random
contents in B's private project. User A (this process, a signed-in client) then
stores, interleaved in random order, each of B's contents ("held": another
project holds the hash) and N fresh contents of the same size that nobody holds
("fresh", the anchor). Both go the same way: A must send the bytes, the hub
hashes them, and the only difference inside the hub is whether the verified
temp file is renamed into place or dropped because the blob is already there.
A second pair of rows times the refused shortcut, ``POST .../complete`` of a
hash A never sent (always 404 ``upload_not_found``).

Aim: held/fresh within noise (p50 and p90 ratios near 1; compare the spread of
three runs). Nothing is asserted.

Run: ``.venv/bin/python bench/bench_hub_dedup.py [--calls 300] [--size-kib 256]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import format_table, load_line, save_results
from bench_hub_common import Hub, client_env, percentile, sign_in

HELD_STORE = "ours store_text, bytes another project holds"
FRESH_STORE = "anchor: the same, bytes nobody holds"
HELD_COMPLETE = "ours complete without bytes, hash held elsewhere"
FRESH_COMPLETE = "anchor: the same, hash held by nobody"
PAIRS = {HELD_STORE: FRESH_STORE, HELD_COMPLETE: FRESH_COMPLETE}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300, help="timed calls of each kind (default 300)")
    p.add_argument("--size-kib", type=int, default=256, help="size of each content (default 256 KiB)")
    return p.parse_args(argv)


def _as_client(client_dir: Path) -> None:
    os.environ["KACHERY_CLOUD_DIR"] = str(client_dir)
    for name in ("KACHERY_HUB_URL", "KACHERY_HUB_TOKEN", "KACHERY_CLOUD_PROJECT", "KACHERY_CLOUD_EPHEMERAL"):
        os.environ.pop(name, None)


def run(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    import kachery_core as kc
    from kachery_core import _hub

    hub = Hub(work / "hub")
    hub.start()
    try:
        b_dir, a_dir = work / "client-b", work / "client-a"
        sign_in(b_dir, hub.url, hub.token("b@example.org"))
        sign_in(a_dir, hub.url, hub.token("a@example.org"))
        chars = args.size_kib * 1024 // 2
        held = [secrets.token_hex(chars) for _ in range(args.calls)]
        fresh = [secrets.token_hex(chars) for _ in range(args.calls)]

        # B is another computer: its stores run in a process of their own.
        code = "import sys, kachery_core as kc\nfor line in sys.stdin: kc.store_text(line.rstrip('\\n'))"
        env = client_env(b_dir, hub.url)
        subprocess.run([sys.executable, "-c", code], input="\n".join(held) + "\n", text=True, env=env, check=True)

        _as_client(a_dir)
        kc.init(hub_url=hub.url)
        client = _hub.connect_signed("benchmark")
        pid = kc.get_project_id()
        times: dict[str, list[float]] = {name: [] for pair in PAIRS.items() for name in pair}
        for h, f in zip(held, fresh):
            # The shortcut first, while only B's project holds ``h``.
            probes = [(HELD_COMPLETE, h), (FRESH_COMPLETE, f)]
            random.shuffle(probes)
            for name, text in probes:
                sha1 = hashlib.sha1(text.encode()).hexdigest()
                start = time.perf_counter()
                r = client.send("POST", f"/api/projects/{pid}/files/{sha1}/complete", ok_statuses=(404,),
                                json={"label": None, "upload_id": secrets.token_hex(16)})
                times[name].append(time.perf_counter() - start)
                if r.status_code != 404:
                    raise RuntimeError(f"complete without bytes answered {r.status_code}: {r.text}")
                r.close()
            calls = [(HELD_STORE, h), (FRESH_STORE, f)]
            random.shuffle(calls)
            for name, text in calls:
                start = time.perf_counter()
                kc.store_text(text)
                times[name].append(time.perf_counter() - start)
        return times
    finally:
        hub.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-dedup-", dir=os.environ.get("BENCH_TMP")))
    try:
        times = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for name, values in times.items():
        p50, p90 = percentile(values, 50) * 1e3, percentile(values, 90) * 1e3
        summary[name] = {"p50_ms": p50, "p90_ms": p90}
        ratio = ["", ""]
        if name in PAIRS:
            anchor = times[PAIRS[name]]
            ratio = [f"{p50 / (percentile(anchor, 50) * 1e3):.3f}", f"{p90 / (percentile(anchor, 90) * 1e3):.3f}"]
        rows.append([name, f"{p50:.2f}", f"{p90:.2f}", *ratio])
    print(f"\n{args.calls} calls of each kind, {args.size_kib} KiB contents, interleaved in random order")
    print(format_table(["contender", "p50 ms", "p90 ms", "held/fresh p50", "held/fresh p90"], rows))
    save_results("hub_dedup", {"calls": args.calls, "size_kib": args.size_kib, "summary": summary})


if __name__ == "__main__":
    main()
