"""Storing and loading a big file through a real hub, beside a bare uvicorn file server, in one run.

Contenders, each client operation in a process of its own (wall time of the
operation itself; peak RSS growth of the client over its RSS after imports, and
of the server process over its RSS just before, from /proc/<pid>/status VmHWM):

- ours upload: ``kachery_core.store_file(path)`` from a signed-in client (its own
  KACHERY_CLOUD_DIR, empty hash cache, so it hashes the file first) to a
  ``kachery-hub serve`` process (SQLite + folder), which hashes the stream,
  fsyncs and only then makes the file visible;
- ours upload, bytes another project holds: the same file stored by another user
  into their own project on the same hub. A client adds a file to a project only
  by sending its bytes (the hub never takes "another project has it" as proof), so
  this is what a cross-project dedup costs;
- ours download: ``kachery_core.load_file(uri)`` in a second, fresh client dir of
  the same user: download, verify the sha1 while streaming, keep in the local store;
- anchor upload: a streaming PUT of the file with httpx2 to a bare FastAPI app on
  uvicorn that writes it to disk; "verified": the client hashes the file first and
  the server hashes while writing, compares, fsyncs (what the hub does);
- anchor download: an httpx2 streaming GET of the same file (FileResponse, 1 MiB
  chunks) written to disk; "verified": also hashed while streaming.

Every repetition starts a fresh hub (new data folder, new client dirs), so the
hub never answers "already there". Aims: ours at least 0.8x the verified anchor's
throughput, both ways; client and hub peak RSS growth far below the file size.

Run: ``.venv/bin/python bench/bench_hub_transfer.py [--size-mib 1024] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _child import reset_peak_rss
from _report import fmt, format_table, load_line, save_results
from bench_hub_common import (
    MIB,
    Anchor,
    Hub,
    client_env,
    proc_status_kib,
    reset_peak_kib,
    sign_in,
)

CHUNK = MIB
EMAIL = "bench@example.org"
AIM_RSS_MIB = 64  # "far below the file size": the transfers hold a few MiB at a time

OURS_STORE = "ours store_file (upload)"
OURS_STORE_HELD = "ours store_file, bytes another project holds"
ANCHOR_PUT = "anchor PUT, to disk"
ANCHOR_PUT_VERIFIED = "anchor PUT verified (sha1 both ends, fsync)"
OURS_LOAD = "ours load_file (download)"
ANCHOR_GET = "anchor GET, to disk"
ANCHOR_GET_VERIFIED = "anchor GET verified (sha1 while streaming)"
#: Each row of ours, with the plain and the verified anchor it is compared to.
PAIRS = {OURS_STORE: (ANCHOR_PUT, ANCHOR_PUT_VERIFIED), OURS_STORE_HELD: (ANCHOR_PUT, ANCHOR_PUT_VERIFIED),
         OURS_LOAD: (ANCHOR_GET, ANCHOR_GET_VERIFIED)}
ROWS = (ANCHOR_PUT, ANCHOR_PUT_VERIFIED, OURS_STORE, OURS_STORE_HELD, ANCHOR_GET, ANCHOR_GET_VERIFIED, OURS_LOAD)


@dataclass
class Sample:
    seconds: float
    client_rss_growth_kib: int
    #: None when the server's peak could not be reset.
    server_rss_growth_kib: int | None


# ---------------------------------------------------------------- the child side


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _sha1_of(path: str) -> str:
    h = hashlib.sha1()
    for chunk in _file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def _anchor_put(verified: bool) -> Callable[[str, str], str]:
    import httpx2

    def put(path: str, url: str) -> str:
        headers = {"Content-Length": str(os.path.getsize(path))}
        if verified:  # the client must know the sha1 to claim it, as store_file must
            headers["X-Sha1"] = _sha1_of(path)
        with httpx2.Client(timeout=600) as client:
            r = client.put(url, content=_file_chunks(path), headers=headers)
        r.raise_for_status()
        return str(r.json()["size"])

    return put


def _anchor_get(verified: bool) -> Callable[[str, str], str]:
    import httpx2

    def get(url: str, dest: str) -> str:
        h = hashlib.sha1()
        with httpx2.Client(timeout=600) as client, client.stream("GET", url) as r, open(dest, "xb") as f:
            r.raise_for_status()
            for chunk in r.iter_raw():
                if verified:
                    h.update(chunk)
                f.write(chunk)
        return h.hexdigest() if verified else str(os.path.getsize(dest))

    return get


def _ours(op: str) -> Callable[[str, str], str]:
    import httpx2  # noqa: F401  (kachery_core imports these lazily: not part of the timed operation)
    import kachery_core as kc
    import yaml  # noqa: F401
    from kachery_core import _remote  # noqa: F401

    if op == "ours-store":
        return lambda path, _: kc.store_file(path)
    return lambda uri, _: kc.load_file(uri)


def prepare(op: str) -> Callable[[str, str], str]:
    """Import what ``op`` needs and return it ready to call."""
    if op in ("ours-store", "ours-load"):
        return _ours(op)
    if op.startswith("anchor-put"):
        return _anchor_put(op.endswith("-verified"))
    if op.startswith("anchor-get"):
        return _anchor_get(op.endswith("-verified"))
    raise SystemExit(f"unknown operation {op!r}")


def child_main(op: str, a: str, b: str, result_path: str) -> None:
    operation = prepare(op)
    reset_peak_rss()
    rss_after_imports = proc_status_kib("self", "VmRSS")
    start = time.perf_counter()
    value = operation(a, b)
    seconds = time.perf_counter() - start
    growth = max(0, proc_status_kib("self", "VmHWM") - rss_after_imports)
    Path(result_path).write_text(json.dumps({"seconds": seconds, "growth_kib": growth, "value": value}))


# ---------------------------------------------------------------- the parent side


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the random file (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--warmup", type=int, default=0, help="unreported repetitions run first (default 0)")
    return p.parse_args(argv)


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their sha1."""
    h = hashlib.sha1()
    with open(path, "wb") as f:
        for done in range(0, size, 16 * MIB):
            block = os.urandom(min(16 * MIB, size - done))
            h.update(block)
            f.write(block)
    return h.hexdigest()


def equalize_page_cache(path: Path) -> None:
    """Source fully cached, and no writeback of the previous contender pending."""
    for _ in _file_chunks(str(path)):
        pass
    os.sync()


def equalize_guest_memory(size: int, work: Path) -> None:
    """Write and delete ``size`` bytes, so every contender writes into memory the guest just freed.

    On a VM whose hypervisor takes back freed guest memory a few seconds after
    it is freed (free page reporting), writing 1 GiB into pages that must be
    backed again costs ~2 s instead of ~0.3 s. Without this, a contender that
    runs after a pause (ours: a hub starts and two clients sign in first) pays
    that and one that runs right after another's file was deleted does not.
    """
    scratch = work / "scratch.bin"
    block = b"\0" * (16 * MIB)
    with open(scratch, "wb") as f:
        for done in range(0, size, len(block)):
            f.write(block[: size - done])
    scratch.unlink()
    os.sync()


def run_child(op: str, a: str, b: str, env: dict[str, str], server_pid: int, source: Path, work: Path) -> tuple[Sample, str]:
    equalize_page_cache(source)
    equalize_guest_memory(source.stat().st_size, work)
    result = work / "child-result.json"
    result.unlink(missing_ok=True)
    server_before = reset_peak_kib(server_pid)
    cmd = [sys.executable, __file__, "--child", op, a, b, str(result)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0 or not result.exists():
        raise RuntimeError(f"{op} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    server_growth = None if server_before is None else max(0, proc_status_kib(server_pid, "VmHWM") - server_before)
    out: dict[str, Any] = json.loads(result.read_text())
    return Sample(out["seconds"], out["growth_kib"], server_growth), str(out["value"])


def ours(i: int, source: Path, sha1: str, work: Path) -> dict[str, Sample]:
    """Upload then download through a fresh hub with two fresh client dirs."""
    hub = Hub(work / f"hub-{i}")
    up, down, other = work / f"client-up-{i}", work / f"client-down-{i}", work / f"client-other-{i}"
    samples: dict[str, Sample] = {}
    hub.start()
    try:
        token = hub.token(EMAIL)
        sign_in(up, hub.url, token)
        sign_in(down, hub.url, token)
        sign_in(other, hub.url, hub.token("other-" + EMAIL))
        samples[OURS_STORE], uri = run_child("ours-store", str(source), "", client_env(up, hub.url), hub.pid, source, work)
        if sha1 not in uri:
            raise RuntimeError(f"store_file returned {uri}, expected sha1 {sha1}")
        samples[OURS_STORE_HELD], again = run_child("ours-store", str(source), "", client_env(other, hub.url), hub.pid,
                                                    source, work)
        if again != uri:
            raise RuntimeError(f"store_file by another user returned {again}, expected {uri}")
        samples[OURS_LOAD], path = run_child("ours-load", uri, "", client_env(down, hub.url), hub.pid, source, work)
        if os.path.getsize(path) != source.stat().st_size:
            raise RuntimeError(f"load_file gave {path} of the wrong size")
    finally:
        hub.stop()
        for d in (hub.data, up, down, other):
            shutil.rmtree(d, ignore_errors=True)
    return samples


def anchors(anchor: Anchor, source: Path, sha1: str, work: Path) -> dict[str, Sample]:
    samples: dict[str, Sample] = {}
    env, pid = dict(os.environ), anchor.proc.pid if anchor.proc else 0
    for name, op in ((ANCHOR_PUT, "anchor-put"), (ANCHOR_PUT_VERIFIED, "anchor-put-verified")):
        samples[name], _ = run_child(op, str(source), f"{anchor.url}/files/upload.bin", env, pid, source, work)
        (anchor.root / "upload.bin").unlink()
    dest = work / "download.bin"
    for name, op in ((ANCHOR_GET, "anchor-get"), (ANCHOR_GET_VERIFIED, "anchor-get-verified")):
        samples[name], value = run_child(op, f"{anchor.url}/files/source.bin", str(dest), env, pid, source, work)
        if op.endswith("verified") and value != sha1:
            raise RuntimeError(f"anchor download has sha1 {value}, expected {sha1}")
        dest.unlink()
    return samples


def run_all(args: argparse.Namespace) -> list[dict[str, Sample]]:
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-hub-transfer-", dir=os.environ.get("BENCH_TMP")))
    anchor = Anchor(work / "anchor")
    try:
        source = work / "random.bin"
        print(f"making {args.size_mib} MiB of random bytes in {source} ...", flush=True)
        sha1 = make_random_file(source, args.size_mib * MIB)
        anchor.start()
        os.link(source, anchor.root / "source.bin")  # the anchor serves the very same bytes
        reps: list[dict[str, Sample]] = []
        for i in range(args.warmup + args.repeat):
            samples = {**anchors(anchor, source, sha1, work), **ours(i, source, sha1, work)}
            kind = "warm-up" if i < args.warmup else f"repetition {i - args.warmup + 1}/{args.repeat}"
            print(f"{kind}: " + ", ".join(f"{n} {s.seconds:.2f}s" for n, s in samples.items()), flush=True)
            if i >= args.warmup:
                reps.append(samples)
        return reps
    finally:
        anchor.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- reporting


@dataclass
class Summary:
    seconds: float
    mib_per_s: float
    client_rss_growth_mib: float
    server_rss_growth_mib: float | None


def summarize(reps: list[dict[str, Sample]], size_mib: float) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in ROWS:
        runs = [r[name] for r in reps]
        seconds = statistics.median(s.seconds for s in runs)
        server = [s.server_rss_growth_kib for s in runs]
        out[name] = Summary(
            seconds=seconds,
            mib_per_s=size_mib / seconds,
            client_rss_growth_mib=max(s.client_rss_growth_kib for s in runs) / 1024,
            server_rss_growth_mib=None if None in server else max(v or 0 for v in server) / 1024,
        )
    return out


def _ratios(summary: dict[str, Summary], name: str) -> tuple[str, str]:
    if name not in PAIRS:
        return "", ""
    plain, verified = PAIRS[name]
    mine = summary[name].mib_per_s
    return f"{mine / summary[plain].mib_per_s:.2f}", f"{mine / summary[verified].mib_per_s:.2f}"


def table(summary: dict[str, Summary]) -> str:
    rows = [
        [name, f"{s.seconds:.2f}", f"{s.mib_per_s:,.0f}", f"{s.client_rss_growth_mib:.1f}",
         fmt(s.server_rss_growth_mib, ".1f"), *_ratios(summary, name)]
        for name, s in summary.items()
    ]
    headers = ["contender", "median s", "MiB/s", "client RSS+ MiB", "server RSS+ MiB",
               "ours/anchor", "ours/verified anchor"]
    return format_table(headers, rows)


def aims(summary: dict[str, Summary]) -> list[str]:
    lines = []
    for name, (_, verified) in PAIRS.items():
        ratio = summary[name].mib_per_s / summary[verified].mib_per_s
        lines.append(f"{name} / {verified} throughput = {ratio:.2f} (aim >= 0.8)")
    client = max(summary[n].client_rss_growth_mib for n in PAIRS)
    lines.append(f"client peak RSS growth, worst of ours = {client:.1f} MiB (aim < {AIM_RSS_MIB}: constant memory)")
    hub = [summary[n].server_rss_growth_mib for n in PAIRS]
    worst = None if None in hub else max(v or 0.0 for v in hub)
    lines.append(f"hub peak RSS growth, worst of ours = {fmt(worst, '.1f')} MiB (aim < {AIM_RSS_MIB})")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    reps = run_all(args)
    summary = summarize(reps, args.size_mib)
    print(f"\n{args.size_mib} MiB of random bytes over loopback: median of {args.repeat} "
          f"(after {args.warmup} warm-up); RSS+ = largest peak growth seen")
    print(table(summary))
    aim_lines = aims(summary)
    print("\n" + "\n".join(aim_lines))
    save_results("hub_transfer", {
        "size_mib": args.size_mib, "repeat": args.repeat, "warmup": args.warmup,
        "summary": {n: vars(s) for n, s in summary.items()},
        "repetitions": [{n: vars(s) for n, s in r.items()} for r in reps],
        "aims": aim_lines,
    })


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:6])
    else:
        main()
