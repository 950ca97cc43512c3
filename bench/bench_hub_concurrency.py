"""50 concurrent clients storing small files through a real hub, beside the same PUTs to a bare uvicorn server.

Each client is a process of its own with its own KACHERY_CLOUD_DIR, signed in
to a ``kachery-hub serve`` process (SQLite + folder) as one of ``--users`` users.
Each writes ``--files`` random files of 1–64 KiB to disk, says it is ready, and
on the parent's word stores them one after the other:

- anchor: read the file, sha1 it, PUT it (httpx2, keep-alive) to the bare FastAPI
  app of :mod:`bench_hub_anchor`, which hashes, compares, fsyncs and renames it;
- ours: ``kachery_core.store_file(path)`` (hash, signed PUT; the hub verifies the
  sha1, fsyncs the blob and records it in SQLite).

The anchor phase runs first, then ours, with the same processes and files.
Reported: errors (aim: 0), files/s over the whole phase (from the parent's "go"
to the last client's answer), and per-store latency p50/p99.

Run: ``.venv/bin/python bench/bench_hub_concurrency.py [--clients 50] [--files 20] [--users 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from _report import format_table, load_line, save_results
from bench_hub_common import KIB, Anchor, Hub, client_env, percentile, stop

PHASES = ("anchor", "ours")
LABELS = {"anchor": "anchor PUT (sha1 both ends, fsync)", "ours": "ours store_file"}
READY = "ready"
WORKER_TIMEOUT_S = 600.0


# ---------------------------------------------------------------- the worker side


def make_files(folder: Path, index: int, count: int) -> list[Path]:
    """``count`` files of 1–64 KiB of random bytes (sizes drawn from a seed per worker)."""
    sizes = random.Random(index).sample(range(KIB, 64 * KIB + 1), count)
    paths = []
    for j, size in enumerate(sizes):
        path = folder / f"w{index:03d}-{j:03d}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def timed(store: Callable[[Path], Any], paths: list[Path]) -> dict[str, Any]:
    """Store every path; per-store seconds and the errors (never raised: they are the result)."""
    latencies, errors = [], []
    for path in paths:
        start = time.perf_counter()
        try:
            store(path)
        except Exception as e:  # noqa: BLE001 - an error is a figure here, reported by the parent
            errors.append(f"{path.name}: {type(e).__name__}: {e}")
        latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "errors": errors}


def worker_main(index: str, hub_url: str, token: str, anchor_url: str, folder: str, count: str) -> None:
    import httpx2
    import kachery_core as kc

    paths = make_files(Path(folder), int(index), int(count))
    kc.init(hub_url=hub_url, token=token)
    http = httpx2.Client(timeout=WORKER_TIMEOUT_S)

    def anchor_put(path: Path) -> None:
        data = path.read_bytes()
        headers = {"X-Sha1": hashlib.sha1(data).hexdigest()}
        http.put(f"{anchor_url}/files/{path.name}", content=data, headers=headers).raise_for_status()

    stores = {"anchor": anchor_put, "ours": lambda p: kc.store_file(str(p))}
    print(READY, flush=True)
    for line in sys.stdin:
        phase = line.strip()
        if phase not in stores:
            break
        print(json.dumps(timed(stores[phase], paths)), flush=True)


# ---------------------------------------------------------------- the parent side


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50, help="concurrent client processes (default 50)")
    p.add_argument("--files", type=int, default=20, help="files each client stores (default 20)")
    p.add_argument("--users", type=int, default=5, help="distinct users the clients sign in as (default 5)")
    return p.parse_args(argv)


def answer(stdout: IO[str], deadline: float) -> str:
    """The worker's next protocol line (anything else it prints is skipped)."""
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            raise RuntimeError("a worker exited early")
        if line.startswith("{") or line.strip() == READY:
            return line
    raise RuntimeError("a worker did not answer in time")


@dataclass
class Workers:
    procs: list[subprocess.Popen[str]]

    @classmethod
    def start(cls, args: argparse.Namespace, hub: Hub, anchor: Anchor, work: Path) -> Workers:
        tokens = [hub.token(f"user{u}@example.org") for u in range(args.users)]
        files = work / "files"
        files.mkdir()
        procs = []
        for i in range(args.clients):
            cmd = [sys.executable, __file__, "--worker", str(i), hub.url, tokens[i % args.users], anchor.url,
                   str(files), str(args.files)]
            env = client_env(work / f"client-{i:03d}", hub.url)
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        workers = cls(procs)
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for p in procs:
            assert p.stdout is not None
            answer(p.stdout, deadline)  # every client signed in and holding its files
        return workers

    def phase(self, name: str) -> tuple[float, list[dict[str, Any]]]:
        """Tell every worker to go; seconds until the last one answered, and their answers."""
        start = time.perf_counter()
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(name + "\n")
            p.stdin.flush()
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        answers = []
        for p in self.procs:
            assert p.stdout is not None
            answers.append(json.loads(answer(p.stdout, deadline)))
        return time.perf_counter() - start, answers

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()  # end of input: the worker leaves its loop
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(p)


def summarize(seconds: float, answers: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for a in answers for x in a["latencies"]]
    errors = [e for a in answers for e in a["errors"]]
    return {
        "seconds": seconds, "stores": len(latencies), "errors": len(errors), "first_errors": errors[:5],
        "files_per_s": (len(latencies) - len(errors)) / seconds,
        "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
    }


def table(summary: dict[str, dict[str, Any]]) -> str:
    anchor = summary["anchor"]
    rows = []
    for phase, s in summary.items():
        ratio = [f"{s['files_per_s'] / anchor['files_per_s']:.2f}", f"{s['p50_ms'] / anchor['p50_ms']:.2f}",
                 f"{s['p99_ms'] / anchor['p99_ms']:.2f}"] if phase != "anchor" else ["", "", ""]
        rows.append([LABELS[phase], str(s["stores"]), str(s["errors"]), f"{s['seconds']:.2f}",
                     f"{s['files_per_s']:,.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", *ratio])
    headers = ["contender", "stores", "errors", "s", "files/s", "p50 ms", "p99 ms",
               "files/s ours/anchor", "p50 ours/anchor", "p99 ours/anchor"]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-hub-concurrency-", dir=os.environ.get("BENCH_TMP")))
    hub, anchor = Hub(work / "hub"), Anchor(work / "anchor")
    workers: Workers | None = None
    summary: dict[str, dict[str, Any]] = {}
    try:
        hub.start()
        anchor.start()
        print(f"starting {args.clients} clients ({args.users} users), {args.files} files each ...", flush=True)
        workers = Workers.start(args, hub, anchor, work)
        for phase in PHASES:
            summary[phase] = summarize(*workers.phase(phase))
    finally:
        if workers is not None:
            workers.stop()
        hub.stop()
        anchor.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.clients} concurrent clients x {args.files} small files (1-64 KiB), "
          f"{args.users} users; files/s over the whole phase")
    print(table(summary))
    for phase, s in summary.items():
        for e in s["first_errors"]:
            print(f"  {LABELS[phase]} error: {e}")
    errors = summary["ours"]["errors"]
    print(f"\nours: {errors} errors (aim 0); {summary['ours']['files_per_s']:,.0f} files/s")
    save_results("hub_concurrency", {"clients": args.clients, "files": args.files, "users": args.users,
                                            "summary": summary})


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:8])
    else:
        main()
