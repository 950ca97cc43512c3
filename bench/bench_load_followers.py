"""1,000 live feed followers on one hub: how long one append takes to reach all of them.

Starts, on free 127.0.0.1 ports: a ``kachery-hub serve`` on the embedded default
(SQLite + folder), and unless ``--skip-postgres`` a throwaway PostgreSQL cluster with
a second hub on it; in the same run the anchor, the bare FastAPI SSE broadcaster of
:mod:`_load_anchor` on uvicorn. Every hub runs with ``KACHERY_HUB_MAX_STREAMS_PER_ADDRESS``
raised past the follower count (all followers share 127.0.0.1; the default is 256).

For each server: ``--procs`` follower processes (:mod:`_load_follow_child`) open
``--followers`` event streams in all, the feed's ``GET /api/feeds/{id}/events``
that ``Feed.follow`` reads (signed by kachery_core's signing code, read by a small
asyncio client so that 1,000 of them cost little CPU); an appender process (``Feed.append_message``
on its session; anchor: ``POST /push``) then appends one message a round. A round
ends when every follower process says all its streams have the message; its delivery
time is the last stream's receive time minus the time just before the append call.
Rounds are ``--gap-ms`` apart; ``--warmup`` rounds are dropped. Reported: delivery
p50/p99/max, messages lost (follower-rounds that never came), streams refused, the
server's RSS with all followers connected and its peak, CPU seconds of the server and
the followers, and ours / anchor.

Run: ``.venv/bin/python bench/bench_load_followers.py [--quick] [--skip-postgres]``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _load_http import cpu_seconds, pg_transactions
from _report import fmt, format_table, load_line, save_results
from bench_hub_common import (BareApp, Hub, latency_summary, postgres_server, print_log_tails, proc_status_kib,
                              signed_in_env, stop)

HERE = Path(__file__).resolve().parent
CHILD = str(HERE / "_load_follow_child.py")
ROUND_TIMEOUT_S = 20.0
ANCHOR = "anchor: bare SSE broadcaster (FastAPI, uvicorn)"
OURS = "ours: kachery-hub serve (SQLite)"
OURS_PG = "ours: kachery-hub serve (PostgreSQL)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--followers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4, help="follower processes (the followers are split among them)")
    p.add_argument("--rounds", type=int, default=200, help="measured appends")
    p.add_argument("--warmup", type=int, default=10, help="appends before them, not reported")
    p.add_argument("--gap-ms", type=float, default=20.0, help="pause between a round's end and the next append")
    p.add_argument("--skip-postgres", action="store_true", help="no PostgreSQL, no hub on it")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200 followers, 30 rounds, 3 warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.followers, args.rounds, args.warmup = 200, 30, 3
    return args


@dataclass
class LoadHub(Hub):
    """A ``kachery-hub serve`` process; with ``database``, on that PostgreSQL database."""

    database: str = ""
    extra: list[str] = field(default_factory=list)

    def cli_args(self) -> list[str]:
        return ["--data", str(self.data), *(["--database", self.database] if self.database else [])]


def read_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    return proc.stdout.readline() if ready else None


def spawn(role: str, args: dict[str, Any], env: dict[str, str] | None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, CHILD, role, json.dumps(args)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen[str], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        line = read_line(proc, deadline)
        if line is None or line == "":
            raise RuntimeError(f"{what} did not say ready within {timeout:g} s (exit {proc.poll()})")
        if line.strip() == "ready":
            return


def measure(name: str, args: argparse.Namespace, server_pid: int, url: str, path: str,
            env: dict[str, str] | None, append_args: dict[str, Any], database: str = "") -> dict[str, Any]:
    """Followers on ``url`` + ``path``, then the rounds of appends; the figures of one server."""
    sizes = [args.followers // args.procs + (1 if i < args.followers % args.procs else 0) for i in range(args.procs)]
    print(f"  {name}: connecting {args.followers} followers in {args.procs} processes", flush=True)
    followers: list[subprocess.Popen[str]] = []
    appender: subprocess.Popen[str] | None = None
    try:
        for size in sizes:
            followers.append(spawn("follow", {"url": url, "path": path, "count": size, "sign": env is not None}, env))
        for proc in followers:
            wait_ready(proc, "a follower process")
        rss_connected = proc_status_kib(server_pid, "VmRSS") / 1024
        appender = spawn("append", append_args, env)
        wait_ready(appender, "the appender")
        cpu0, xacts0 = cpu_seconds(server_pid), pg_transactions(database)
        delivery, append_call, timed_out = [], [], 0
        for n in range(args.warmup + args.rounds):
            assert appender.stdin is not None
            appender.stdin.write(f"{n}\n")
            appender.stdin.flush()
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            line = read_line(appender, deadline)
            if not line or not line.startswith("sent"):
                raise RuntimeError(f"the appender failed at round {n} (exit {appender.poll()})")
            _, _, t0, t1 = line.split()
            arrived: list[float] = []
            for proc in followers:
                while True:
                    got = read_line(proc, deadline)
                    if not got:
                        break
                    word, number, when = got.split()
                    if word == "got" and int(number) == n:
                        arrived.append(float(when))
                        break
            if len(arrived) < len(followers):
                timed_out += 1
            elif n >= args.warmup:
                delivery.append(max(arrived) - float(t0))
                append_call.append(float(t1) - float(t0))
            time.sleep(args.gap_ms / 1000)
        server_cpu = cpu_seconds(server_pid) - cpu0
        time.sleep(0.6)  # PostgreSQL's statistics reach pg_stat_database within 500 ms
        xacts = pg_transactions(database) - xacts0
        results = []
        for proc in followers:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 60
            while True:
                line = read_line(proc, deadline)
                if not line:
                    raise RuntimeError("a follower process gave no result")
                if line.startswith("result "):
                    results.append(json.loads(line[7:]))
                    break
            proc.wait(timeout=30)
    finally:
        for proc in [*followers, *([appender] if appender else [])]:
            stop(proc)
    measured = range(args.warmup, args.warmup + args.rounds)
    lost = sum(args.followers - sum(r["got"].get(str(n), 0) for r in results) for n in measured)
    out = {
        "delivery": latency_summary(delivery) if delivery else None,
        "delivery_ms_each": [round(1000 * x, 2) for x in delivery],
        "append_call": latency_summary(append_call) if append_call else None,
        "rounds": args.rounds, "rounds_timed_out": timed_out, "lost": lost,
        "connected": sum(r["connected"] for r in results),
        "refused": sum(sum(r["refused"].values()) for r in results),
        "ended_early": sum(r["ended_early"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "rss_connected_mib": rss_connected,
        "rss_peak_mib": proc_status_kib(server_pid, "VmHWM") / 1024,
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_append": 1000 * server_cpu / (args.warmup + args.rounds),
        "followers_cpu_s": sum(r["cpu_s"] for r in results),
        "db_transactions_per_append": xacts / (args.warmup + args.rounds) if database else None,
    }
    d = out["delivery"]
    print(f"    p50 {fmt(d and d['p50_ms'], '.1f')} ms, p99 {fmt(d and d['p99_ms'], '.1f')} ms, "
          f"lost {lost}, refused {out['refused']}, RSS {rss_connected:.0f} MiB", flush=True)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    anchor = results[ANCHOR]["delivery"]
    rows = []
    for name, r in results.items():
        d = r["delivery"] or {}

        def ratio(k: str) -> str:
            return fmt(d[k] / anchor[k], ".2f") if d and anchor else "-"

        rows.append([name, f"{r['connected']:,}", fmt(d.get("p50_ms"), ".1f"), fmt(d.get("p99_ms"), ".1f"),
                     fmt(d.get("max_ms"), ".1f"), str(r["lost"]), str(r["refused"]),
                     f"{r['rss_connected_mib']:.0f}", f"{r['rss_peak_mib']:.0f}",
                     f"{r['server_cpu_ms_per_append']:.1f}", ratio("p50_ms"), ratio("p99_ms")])
    return format_table(["server", "followers", "p50 ms", "p99 ms", "max ms", "lost", "refused", "RSS MiB",
                         "peak MiB", "server CPU ms/append", "p50 / anchor", "p99 / anchor"], rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-followers-", dir=os.environ.get("BENCH_TMP")))
    limit = str(args.followers + 100)
    hub_env = {"KACHERY_HUB_MAX_STREAMS_PER_ADDRESS": limit}
    print(f"hubs run with KACHERY_HUB_MAX_STREAMS_PER_ADDRESS={limit} (default 256): every follower is on 127.0.0.1")
    results: dict[str, dict[str, Any]] = {}
    try:
        with ExitStack() as stack:
            anchor = BareApp("_load_anchor:broadcast_app")
            stack.callback(anchor.stop)
            anchor.start()
            assert anchor.proc is not None
            results[ANCHOR] = measure(ANCHOR, args, anchor.proc.pid, anchor.url, "/events", None,
                                      {"kind": "anchor", "url": anchor.url})
            anchor.stop()
            hubs = [(OURS, LoadHub(work / "hub", env=hub_env))]
            if not args.skip_postgres:
                database = stack.enter_context(postgres_server())
                hubs.append((OURS_PG, LoadHub(work / "pg-hub", env=hub_env, database=database)))
            for name, hub in hubs:
                stack.callback(hub.stop)
                hub.start()
                env = signed_in_env(work, name.split("(")[1].rstrip(")").lower(), hub)
                code = "import kachery_core as kc; print(kc.create_feed(label='load').feed_id)"
                feed_id = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         check=True, timeout=60).stdout.strip()
                results[name] = measure(name, args, hub.pid, hub.url, f"/api/feeds/{feed_id}/events?start=0", env,
                                        {"kind": "hub", "feed_id": feed_id}, hub.database)
                hub.stop()
        print(f"\ndelivery of one append to all {args.followers:,} followers ({args.rounds} rounds after "
              f"{args.warmup} warm-up, {args.procs} follower processes; last follower's receive time - "
              "time before the append call)")
        print(table(results))
        cpu = ", ".join(f"{name.split(':')[0] if name == ANCHOR else name.split('(')[1].rstrip(')')} "
                        f"{r['followers_cpu_s']:.1f} s" for name, r in results.items())
        print(f"follower processes' CPU, all rounds and connecting: {cpu}")
        for name, r in results.items():
            if r["db_transactions_per_append"] is not None:
                print(f"{name}: {r['db_transactions_per_append']:.0f} PostgreSQL transactions per append "
                      "(pg_stat_database; a follower's read of a page outside a transaction counts as one)")
        aim_lines = []
        for name, r in results.items():
            if name == ANCHOR or r["delivery"] is None:
                continue
            ok = r["lost"] == 0 and r["refused"] == 0 and r["out_of_order"] == 0
            aim_lines.append(f"{name}: lost {r['lost']}, refused {r['refused']}, out of order {r['out_of_order']} "
                             f"(aim 0): {'met' if ok else 'NOT met'}; delivery p99 {r['delivery']['p99_ms']:.1f} ms")
        print("\n" + "\n".join(aim_lines))
        save_results("load-followers", {"args": vars(args), "max_streams_per_address": limit, "results": results,
                                        "aims": aim_lines})
    except BaseException:
        print_log_tails(work)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
