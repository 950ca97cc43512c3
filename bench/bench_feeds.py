"""Feeds through a real hub: delivery latency, batched append throughput, catch-up read, beside their anchors.

Servers, all started here on free 127.0.0.1 ports and stopped by PID: a
``kachery-hub serve`` process on the embedded default (SQLite + folder); the
bare FastAPI app of :mod:`bench_feeds_anchor` on uvicorn ("bare SSE"); a
``redis-server`` (Debian's; no persistence); and, unless ``--skip-postgres``, a
throwaway PostgreSQL cluster with two more hub processes on it. Every client is
a process of its own (:mod:`_feed_child`), hub clients each with their own
signed-in KACHERY_CLOUD_DIR, all as one user.

1. Latency: one process sends one message at a time (``--interval-ms`` apart on
   average, jittered), carrying ``time.time()``; another follows and takes
   ``time.time()`` when a message is handed to it. Contenders: bare SSE push
   (POST -> asyncio queue -> SSE), Redis Streams XADD -> XREAD BLOCK, ours
   ``Feed.append_message`` -> ``Feed.follow()``, ours -> ``get_next_messages(timeout_sec=30)``,
   and ours across two hub processes on one PostgreSQL (append through one,
   follow through the other). Aims: p50 <= 2 x the bare SSE push, p99 <= 50 ms;
   two hubs on PostgreSQL p50 <= 5 ms.
2. Batched append: ``--total`` messages of ~``--size`` bytes in batches of
   ``--batch`` with ``Feed.append_messages``, vs Redis XADD pipelined in batches of
   the same size and vs the bare app parsing each batch's JSON. Aim >= 100,000 messages/s.
3. Catch-up read of the feed step 2 filled: ``Feed.iter_messages`` and
   ``Feed.follow`` until caught up, vs Redis XRANGE and bare JSON pages of ``--page``.
   Aims >= 200,000 messages/s, client peak RSS growth < 100 MiB.

Nothing is asserted; ratios and aims are printed; JSON goes to bench/results/.
``--profile`` samples the hub and our client processes with py-spy (when
installed) and prints where their time goes.

Run: ``.venv/bin/python bench/bench_feeds.py [--quick] [--skip-postgres] [--profile]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import fmt, format_table, load_line, save_results
from bench_hub_common import (HERE, PY_SPY, BareApp, Hub, Runner, free_port, hotspots, latency_summary, percentile,
                              postgres_server, print_log_tails, sampled, signed_in_env, stop)

CHILD = str(HERE / "_feed_child.py")

SSE = "bare SSE push (uvicorn, asyncio queue)"
REDIS_LAT = "Redis XADD -> XREAD BLOCK"
OURS_FOLLOW = "ours append_message -> follow()"
OURS_NEXT = "ours append_message -> get_next_messages(30)"
OURS_PG = "ours, 2 hubs on PostgreSQL -> follow()"
REDIS_APPEND = "Redis XADD pipelined"
SSE_APPEND = "bare POST /batch (JSON parsed, kept in memory)"
OURS_APPEND = "ours append_messages"
REDIS_READ = "Redis XRANGE pages"
SSE_READ = "bare GET /messages pages (JSON)"
OURS_ITER = "ours iter_messages"
OURS_FOLLOW_READ = "ours follow() until caught up"

AIM_P50_RATIO = 2.0
AIM_P99_MS = 50.0
AIM_PG_P50_MS = 5.0
AIM_APPEND = 100_000
AIM_READ = 200_000
AIM_READ_RSS_MIB = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: 100 latency messages, 100,000-message feed")
    p.add_argument("--messages", type=int, help="measured messages per latency contender (default 500; quick 100)")
    p.add_argument("--warmup", type=int, default=20, help="untimed latency messages first (default 20)")
    p.add_argument("--interval-ms", type=float, default=10.0, help="mean pause between latency messages (default 10)")
    p.add_argument("--total", type=int, help="messages appended then read back (default 1,000,000; quick 100,000)")
    p.add_argument("--batch", type=int, default=1000, help="messages per append (default 1000)")
    p.add_argument("--size", type=int, default=100, help="bytes of compact JSON per message (default 100)")
    p.add_argument("--page", type=int, default=1000, help="messages per anchor read page (default 1000)")
    p.add_argument("--skip-postgres", action="store_true", help="no PostgreSQL, no two-hub row")
    p.add_argument("--profile", action="store_true", help="sample the hub and our clients with py-spy")
    args = p.parse_args(argv)
    args.messages = args.messages or (100 if args.quick else 500)
    args.total = args.total or (100_000 if args.quick else 1_000_000)
    return args


# ---------------------------------------------------------------- servers


@dataclass
class DbHub(Hub):
    """A ``kachery-hub serve`` process with ``--database`` (several may share one)."""

    database: str = ""
    log_name: str = field(default="hub")

    def cli_args(self) -> list[str]:
        return ["--data", str(self.data), "--database", self.database]


@contextmanager
def redis_server(work: Path) -> Iterator[int]:
    """A ``redis-server`` without persistence on a free loopback port; yields the port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: `apt-get install -y redis-server` (bash dev.sh setup does)")
    port = free_port()
    folder = work / "redis"
    folder.mkdir()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        stop(proc)


# ---------------------------------------------------------------- measurements


def measure_latency(runner: Runner, args: argparse.Namespace, hub: Hub, sse: BareApp, redis_port: int,
                    pg: tuple[Hub, Hub] | None, envs: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    common = {"n": args.messages, "warmup": args.warmup, "interval_s": args.interval_ms / 1e3}
    out: dict[str, dict[str, float]] = {}

    def show(name: str, r: dict[str, Any]) -> None:
        out[name] = latency_summary(r["latencies_s"])
        print(f"  {name}: p50 {out[name]['p50_ms']:.2f} ms, p99 {out[name]['p99_ms']:.2f} ms", flush=True)

    a = {**common, "url": sse.url}
    show(SSE, runner.pair(("sse-follow", a, None), ("sse-send", a, None)))
    a = {**common, "port": redis_port, "stream": "latency"}
    show(REDIS_LAT, runner.pair(("redis-follow", a, None), ("redis-send", a, None)))
    for name, mode in ((OURS_FOLLOW, "follow"), (OURS_NEXT, "next")):
        uri = runner.run("hub-create", {"label": f"latency {mode}"}, envs["writer"])["uri"]
        a = {**common, "uri": uri, "mode": mode}
        with sampled(runner, f"hub during {name}", hub.pid):
            show(name, runner.pair(("hub-follow", a, envs["reader"]), ("hub-send", a, envs["writer"]),
                                   profile_label=f"follower: {name}"))
    if pg is not None:
        uri = runner.run("hub-create", {"label": "latency across hubs"}, envs["pg-writer"])["uri"]
        a = {**common, "uri": uri, "mode": "follow"}
        with sampled(runner, f"hub appended to during {OURS_PG}", pg[0].pid), \
                sampled(runner, f"hub followed during {OURS_PG}", pg[1].pid):
            show(OURS_PG, runner.pair(("hub-follow", a, envs["pg-reader"]), ("hub-send", a, envs["pg-writer"])))
    return out


def throughput(r: dict[str, Any]) -> dict[str, float]:
    ms = [x * 1e3 for x in r["batch_seconds"]]
    return {"count": r["count"], "seconds": r["seconds"], "per_s": r["count"] / r["seconds"],
            "batch_p50_ms": percentile(ms, 50), "batch_p99_ms": percentile(ms, 99),
            "message_bytes": r["message_bytes"]}


def measure_append(runner: Runner, args: argparse.Namespace, hub: Hub, sse: BareApp, redis_port: int,
                   envs: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, float]], str]:
    common = {"total": args.total, "batch": args.batch, "size": args.size}
    out: dict[str, dict[str, float]] = {}

    def show(name: str, r: dict[str, Any]) -> None:
        out[name] = throughput(r)
        print(f"  {name}: {out[name]['per_s']:,.0f} messages/s", flush=True)

    show(REDIS_APPEND, runner.run("redis-append", {**common, "port": redis_port, "stream": "fill"}))
    show(SSE_APPEND, runner.run("sse-append", {**common, "url": sse.url}))
    uri = runner.run("hub-create", {"label": "fill"}, envs["writer"])["uri"]
    with sampled(runner, f"hub during {OURS_APPEND}", hub.pid):
        show(OURS_APPEND, runner.run("hub-append", {**common, "uri": uri}, envs["writer"],
                                     profile_label=f"client: {OURS_APPEND}"))
    return out, uri


def read_summary(r: dict[str, Any]) -> dict[str, float]:
    return {"count": r["count"], "seconds": r["seconds"], "per_s": r["count"] / r["seconds"],
            "rss_growth_mib": r["peak_rss_growth_kib"] / 1024, "peak_was_reset": r["peak_was_reset"]}


def measure_read(runner: Runner, args: argparse.Namespace, hub: Hub, sse: BareApp, redis_port: int,
                 envs: dict[str, dict[str, str]], uri: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}

    def show(name: str, r: dict[str, Any]) -> None:
        out[name] = read_summary(r)
        print(f"  {name}: {out[name]['per_s']:,.0f} messages/s, peak RSS +{out[name]['rss_growth_mib']:.1f} MiB",
              flush=True)

    show(REDIS_READ, runner.run("redis-read", {"total": args.total, "page": args.page, "port": redis_port,
                                               "stream": "fill"}))
    show(SSE_READ, runner.run("sse-read", {"total": args.total, "page": args.page, "url": sse.url}))
    for name, mode in ((OURS_ITER, "iter"), (OURS_FOLLOW_READ, "follow")):
        with sampled(runner, f"hub during {name}", hub.pid):
            show(name, runner.run("hub-read", {"total": args.total, "uri": uri, "mode": mode}, envs["reader"],
                                  profile_label=f"client: {name}"))
    return out


# ---------------------------------------------------------------- report


def latency_table(lat: dict[str, dict[str, float]]) -> str:
    base = lat[SSE]
    rows = []
    for name, s in lat.items():
        rows.append([name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}", f"{s['max_ms']:.1f}",
                     f"{s['p50_ms'] / base['p50_ms']:.2f}", f"{s['p99_ms'] / base['p99_ms']:.2f}"])
    return format_table(["contender", "p50 ms", "p99 ms", "mean ms", "max ms", "p50 / bare SSE", "p99 / bare SSE"], rows)


def rate_table(rows_in: dict[str, dict[str, float]], anchors: tuple[str, str], extra: str) -> str:
    rows = []
    for name, s in rows_in.items():
        ratios = [f"{s['per_s'] / rows_in[a]['per_s']:.2f}" for a in anchors]
        rows.append([name, f"{s['count']:,.0f}", f"{s['seconds']:.2f}", f"{s['per_s']:,.0f}",
                     fmt(s.get(extra), ".1f"), *ratios])
    heads = {"batch_p50_ms": "batch p50 ms", "rss_growth_mib": "client RSS+ MiB"}
    return format_table(["contender", "messages", "s", "messages/s", heads[extra], "/ Redis", "/ bare HTTP"], rows)


def aims(lat: dict[str, dict[str, float]], app: dict[str, dict[str, float]],
         read: dict[str, dict[str, float]]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = []
    for name in (OURS_FOLLOW, OURS_NEXT):
        ratio = lat[name]["p50_ms"] / lat[SSE]["p50_ms"]
        lines.append(f"{name}: p50 / bare SSE = {ratio:.2f} (aim <= {AIM_P50_RATIO:g}): {verdict(ratio <= AIM_P50_RATIO)}")
        p99 = lat[name]["p99_ms"]
        lines.append(f"{name}: p99 = {p99:.2f} ms (aim <= {AIM_P99_MS:g} ms): {verdict(p99 <= AIM_P99_MS)}")
    if OURS_PG in lat:
        p50 = lat[OURS_PG]["p50_ms"]
        lines.append(f"{OURS_PG}: p50 = {p50:.2f} ms (aim <= {AIM_PG_P50_MS:g} ms): {verdict(p50 <= AIM_PG_P50_MS)}")
    rate = app[OURS_APPEND]["per_s"]
    lines.append(f"{OURS_APPEND}: {rate:,.0f} messages/s (aim >= {AIM_APPEND:,}): {verdict(rate >= AIM_APPEND)}")
    for name in (OURS_ITER, OURS_FOLLOW_READ):
        rate, mib = read[name]["per_s"], read[name]["rss_growth_mib"]
        lines.append(f"{name}: {rate:,.0f} messages/s (aim >= {AIM_READ:,}): {verdict(rate >= AIM_READ)}; "
                     f"client peak RSS +{mib:.1f} MiB (aim < {AIM_READ_RSS_MIB}): {verdict(mib < AIM_READ_RSS_MIB)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile and not Path(PY_SPY).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-feeds-", dir=os.environ.get("BENCH_TMP")))
    runner = Runner(work, CHILD, profile=args.profile)
    try:
        with ExitStack() as stack:
            hub = Hub(work / "hub")
            sse = BareApp("bench_feeds_anchor:feed_anchor_app")
            stack.callback(lambda: stop(sse.proc))
            stack.callback(hub.stop)
            hub.start()
            sse.start()
            redis_port = stack.enter_context(redis_server(work))
            envs = {"writer": signed_in_env(work, "writer", hub), "reader": signed_in_env(work, "reader", hub)}
            pg: tuple[Hub, Hub] | None = None
            if not args.skip_postgres:
                database = stack.enter_context(postgres_server())
                pg = (DbHub(work / "pg-hub-a", database=database), DbHub(work / "pg-hub-b", database=database))
                for h in pg:
                    stack.callback(h.stop)
                    h.data.mkdir()
                    h.start()
                envs["pg-writer"] = signed_in_env(work, "pg-writer", pg[0])
                envs["pg-reader"] = signed_in_env(work, "pg-reader", pg[1])

            print(f"\n1. append -> delivery latency: {args.messages} messages one at a time "
                  f"(+{args.warmup} warm-up), ~{args.interval_ms:g} ms apart", flush=True)
            lat = measure_latency(runner, args, hub, sse, redis_port, pg, envs)
            print(f"\n2. batched append: {args.total:,} messages of ~{args.size} bytes in batches of {args.batch:,}",
                  flush=True)
            app, uri = measure_append(runner, args, hub, sse, redis_port, envs)
            print(f"\n3. catch-up read of the {args.total:,} messages", flush=True)
            read = measure_read(runner, args, hub, sse, redis_port, envs, uri)
            hub_rss_mib = int(Path(f"/proc/{hub.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
        print(f"\n1. append -> delivery latency ({args.messages} messages each, ~{args.interval_ms:g} ms apart, "
              "receive time - send time)")
        print(latency_table(lat))
        print(f"\n2. batched append ({args.batch:,} messages of {app[OURS_APPEND]['message_bytes']:.0f} bytes a batch)")
        print(rate_table(app, (REDIS_APPEND, SSE_APPEND), "batch_p50_ms"))
        print(f"\n3. catch-up read (anchors in pages of {args.page:,})")
        print(rate_table(read, (REDIS_READ, SSE_READ), "rss_growth_mib"))
        print(f"\nhub peak RSS over the run: {hub_rss_mib:.0f} MiB")
        aim_lines = aims(lat, app, read)
        print("\n" + "\n".join(aim_lines))
        profiles = {label: hotspots(path) for label, path in runner.profiles.items()}
        for label, lines in profiles.items():
            print(f"\nprofile, {label}:")
            print("\n".join(lines))
        save_results("feeds", {
            "args": vars(args), "latency": lat, "append": app, "read": read, "hub_peak_rss_mib": hub_rss_mib,
            "aims": aim_lines, "profiles": profiles,
        })
    except BaseException:
        print_log_tails(work)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
