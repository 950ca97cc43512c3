"""Tasks through a real hub: request latency, cached results, throughput, recovery from a killed backend.

Servers, all started here on free 127.0.0.1 ports and stopped by PID: a
``kachery-hub serve`` process on the embedded default (SQLite + folder), a
second one with a short task lease (``KACHERY_HUB_TASK_LEASE``, ``--lease``) for
part 4, and the bare FastAPI app of :mod:`bench_tasks_anchor` on uvicorn. Every
client is a process of its own (:mod:`_task_child`): task backends and
requesters each with their own signed-in KACHERY_CLOUD_DIR, all as one user.
The calculation is ``x * x``; every input is new to the hub unless said
otherwise (inputs carry a per-run nonce).

1. Request -> result, one at a time: ``request_task`` of a new calculation,
   served by a ``TaskBackend`` (``--workers`` threads) in another process, vs the
   bare round trip (``POST /calc`` computing it in the server, interleaved with
   ours in the same requester process) and vs Dask ``client.submit(f, x).result()``
   on a LocalCluster (``--workers`` worker processes, one thread each).
   Aims: p50 <= 5 ms and <= 4 x the bare round trip.
2. Cached: ``request_task`` of the same calculations again. Aim: p50 <= 1.5 x the
   bare round trip.
3. Throughput: ``--tasks`` new calculations, one backend of ``--workers`` threads:
   ``submit_tasks`` for all then ``gather_tasks`` (as Dask's map and gather), vs
   Dask ``client.map`` + ``client.gather``. Aim: >= 500 tasks/s. Also shown:
   ``submit_task`` for each then ``result()`` of each. Ours stops waiting after
   ``--budget`` seconds and counts what finished by then.
4. Recovery: backend A takes a job whose handler never returns; backend B (same
   task, answering at once) is started; A is SIGKILLed; timed from the kill to
   the job finished by B (the hub's ``finished_at``) and to the requester holding
   the result. Aim: <= lease + 1 s.

Nothing is asserted; ratios and aims are printed; JSON goes to bench/results/.
``--profile`` samples the hub, the backend and the requesters with py-spy
(when installed) and prints where their time goes.

Run: ``.venv/bin/python bench/bench_tasks.py [--quick] [--profile] [--skip-dask]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from _report import format_table, load_line, save_results
from bench_hub_common import (CHILD_TIMEOUT_S, HERE, PY_SPY, BareApp, Hub, Runner, hotspots, latency_summary, sampled,
                              print_log_tails, signed_in_env, stop, wait_line)

CHILD = str(HERE / "_task_child.py")

BARE = "bare FastAPI round trip (POST /calc)"
DASK = "Dask client.submit(f, x).result()"
OURS_NEW = "ours request_task, new calculation"
OURS_CACHED = "ours request_task, cached result"
DASK_MAP = "Dask client.map + gather"
OURS_MANY = "ours submit_tasks + gather_tasks"
OURS_EACH = "ours submit_task each, then result() each"

AIM_P50_MS = 5.0
AIM_P50_RATIO = 4.0
AIM_CACHED_RATIO = 1.5
AIM_TASKS_PER_S = 500
AIM_RECOVERY_EXTRA_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: 100 requests, 300 tasks, 1 kill")
    p.add_argument("--requests", type=int, help="measured requests per latency contender (default 500; quick 100)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests / tasks first (default 20)")
    p.add_argument("--tasks", type=int, help="tasks of the throughput part (default 1000; quick 300)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds ours may take for the tasks; those finished by then are counted (default 120)")
    p.add_argument("--workers", type=int, default=4, help="backend threads and Dask worker processes (default 4)")
    p.add_argument("--lease", type=float, default=3.0, help="KACHERY_HUB_TASK_LEASE of part 4's hub (default 3)")
    p.add_argument("--kills", type=int, help="repetitions of part 4 (default 3; quick 1)")
    p.add_argument("--skip-dask", action="store_true", help="no Dask rows (when dask[distributed] is not installed)")
    p.add_argument("--profile", action="store_true", help="sample the hub, the backend and requesters with py-spy")
    args = p.parse_args(argv)
    args.requests = args.requests or (100 if args.quick else 500)
    args.tasks = args.tasks or (300 if args.quick else 1000)
    args.kills = args.kills or (1 if args.quick else 3)
    return args


# ---------------------------------------------------------------- servers and backends


@contextmanager
def backend(runner: Runner, env: dict[str, str], mode: str, workers: int) -> Iterator[subprocess.Popen[str]]:
    """A ``_task_child backend`` process, listed by the hub before this yields; SIGTERMed after."""
    proc, _ = runner.spawn("backend", {"mode": mode, "num_workers": workers}, env)
    try:
        yield proc
    finally:
        stop(proc)


def epoch(value: Any) -> float:
    """A job record's time (epoch seconds, or ISO 8601) as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- measurements


def measure_requests(runner: Runner, args: argparse.Namespace, anchor: BareApp, hub: Hub,
                     envs: dict[str, dict[str, str]], run: str) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Parts 1-3; Dask's rows come from one child (one LocalCluster) for both of its parts."""
    lat: dict[str, dict[str, float]] = {}
    rates: dict[str, dict[str, float]] = {}

    def show(name: str, seconds: list[float]) -> None:
        lat[name] = latency_summary(seconds)
        print(f"  {name}: p50 {lat[name]['p50_ms']:.2f} ms, p99 {lat[name]['p99_ms']:.2f} ms", flush=True)

    def rate(name: str, r: dict[str, Any]) -> None:
        rates[name] = {"count": r["count"], "requested": r.get("requested", r["count"]), "seconds": r["seconds"],
                       "per_s": r["count"] / r["seconds"]}
        if "submit_seconds" in r:
            rates[name]["submit_seconds"] = r["submit_seconds"]
        late = rates[name]["requested"] - r["count"]
        print(f"  {name}: {rates[name]['per_s']:,.1f} tasks/s"
              + (f" ({late} of {rates[name]['requested']} not finished within --budget)" if late else ""), flush=True)

    with backend(runner, envs["backend"], "square", args.workers) as b:
        with sampled(runner, "hub during request_task", hub.pid), \
                sampled(runner, "backend during request_task", b.pid):
            r = runner.run("request", {"run": run, "n": args.requests, "warmup": args.warmup,
                                       "anchor_url": anchor.url}, envs["requester"],
                           profile_label="requester: request_task (and the bare round trip)")
        show(BARE, r["anchor_s"])
        show(OURS_NEW, r["new_s"])
        show(OURS_CACHED, r["cached_s"])
        with sampled(runner, "hub during submit_tasks + gather_tasks", hub.pid), \
                sampled(runner, "backend during submit_tasks + gather_tasks", b.pid):
            rate(OURS_MANY, runner.run("throughput-batch", {"run": run + "-batch", "count": args.tasks,
                                                            "warmup": args.warmup, "budget_s": args.budget},
                                       envs["requester"], profile_label="requester: submit_tasks + gather_tasks"))
        rate(OURS_EACH, runner.run("throughput", {"run": run + "-many", "count": args.tasks,
                                                  "warmup": args.warmup, "budget_s": args.budget}, envs["requester"]))
    if not args.skip_dask:
        d = runner.run("dask", {"run": run, "n": args.requests, "warmup": args.warmup, "count": args.tasks,
                                "workers": args.workers})
        show(DASK, d["latencies_s"])
        rate(DASK_MAP, d)
    return lat, rates


def measure_recovery(runner: Runner, args: argparse.Namespace, hub: Hub, envs: dict[str, dict[str, str]],
                     run: str) -> list[dict[str, Any]]:
    """Part 4, ``--kills`` times: A takes the job, B starts, A is SIGKILLed, B finishes it."""
    out = []
    for i in range(args.kills):
        with ExitStack() as stack:
            a, _ = runner.spawn("backend", {"mode": "stall", "num_workers": 1}, envs["backend"])
            stack.callback(stop, a)
            req, result = runner.spawn("kill-request", {"run": run, "i": i}, envs["requester"])
            stack.callback(stop, req)
            wait_line(a, "started", 60, "backend A")
            b, _ = runner.spawn("backend", {"mode": "finish", "num_workers": 1}, envs["backend-2"])
            stack.callback(stop, b)
            killed = time.time()
            os.kill(a.pid, signal.SIGKILL)
            a.wait(timeout=30)
            if req.wait(timeout=CHILD_TIMEOUT_S) != 0:
                raise RuntimeError(f"the requester exited with {req.returncode}")
            r = json.loads(result.read_text())
        job = r["job"]
        row = {"to_finished_s": epoch(job["finished_at"]) - killed, "to_result_s": r["result_time"] - killed,
               "attempts": job.get("attempts"), "finished_by_second": r["result"] == b.pid,
               "status": job.get("status")}
        out.append(row)
        print(f"  kill {i + 1}: finished {row['to_finished_s']:.2f} s after the kill, requester had the result "
              f"after {row['to_result_s']:.2f} s (attempts {row['attempts']}, by backend B: "
              f"{row['finished_by_second']})", flush=True)
    return out


# ---------------------------------------------------------------- report


def latency_table(lat: dict[str, dict[str, float]]) -> str:
    base = lat[BARE]
    dask = lat.get(DASK)
    rows = []
    for name, s in lat.items():
        rows.append([name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}", f"{s['max_ms']:.1f}",
                     f"{s['p50_ms'] / base['p50_ms']:.2f}", f"{s['p99_ms'] / base['p99_ms']:.2f}",
                     f"{s['p50_ms'] / dask['p50_ms']:.2f}" if dask else "-"])
    return format_table(["contender", "p50 ms", "p99 ms", "mean ms", "max ms", "p50 / bare", "p99 / bare",
                         "p50 / Dask"], rows)


def rate_table(rates: dict[str, dict[str, float]]) -> str:
    dask = rates.get(DASK_MAP)
    rows = [[name, f"{s['count']:,.0f} of {s['requested']:,.0f}", f"{s['seconds']:.2f}", f"{s['per_s']:,.1f}",
             f"{s['submit_seconds']:.2f}" if "submit_seconds" in s else "-",
             f"{s['per_s'] / dask['per_s']:.2f}" if dask else "-"] for name, s in rates.items()]
    return format_table(["contender", "tasks finished", "s", "tasks/s", "submitting s", "/ Dask"], rows)


def recovery_table(rows_in: list[dict[str, Any]]) -> str:
    rows = [[str(i + 1), f"{r['to_finished_s']:.2f}", f"{r['to_result_s']:.2f}", str(r["attempts"]),
             "yes" if r["finished_by_second"] else "NO"] for i, r in enumerate(rows_in)]
    return format_table(["kill", "kill -> finished s", "kill -> requester has it s", "attempts", "by backend B"], rows)


def aims(args: argparse.Namespace, lat: dict[str, dict[str, float]], rates: dict[str, dict[str, float]],
         rec: list[dict[str, Any]]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    bare = lat[BARE]["p50_ms"]
    p50 = lat[OURS_NEW]["p50_ms"]
    lines = [f"{OURS_NEW}: p50 = {p50:.2f} ms (aim <= {AIM_P50_MS:g} ms): {verdict(p50 <= AIM_P50_MS)}; "
             f"p50 / bare = {p50 / bare:.2f} (aim <= {AIM_P50_RATIO:g}): {verdict(p50 / bare <= AIM_P50_RATIO)}"]
    ratio = lat[OURS_CACHED]["p50_ms"] / bare
    lines.append(f"{OURS_CACHED}: p50 / bare = {ratio:.2f} (aim <= {AIM_CACHED_RATIO:g}): "
                 f"{verdict(ratio <= AIM_CACHED_RATIO)}")
    per_s = rates[OURS_MANY]["per_s"]
    lines.append(f"{OURS_MANY}: {per_s:,.0f} tasks/s (aim >= {AIM_TASKS_PER_S}): {verdict(per_s >= AIM_TASKS_PER_S)}")
    worst = max(r["to_finished_s"] for r in rec)
    limit = args.lease + AIM_RECOVERY_EXTRA_S
    ok = worst <= limit and all(r["finished_by_second"] for r in rec)
    lines.append(f"kill -> finished by another backend: worst {worst:.2f} s of {len(rec)} (aim <= lease + "
                 f"{AIM_RECOVERY_EXTRA_S:g} s = {limit:g} s): {verdict(ok)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile and not Path(PY_SPY).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    if not args.skip_dask:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SystemExit("Dask rows need dask[distributed] (pip install 'dask[distributed]'), "
                             "or use --skip-dask") from None
    print(f"before: {load_line()}")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-tasks-", dir=os.environ.get("BENCH_TMP")))
    runner = Runner(work, CHILD, profile=args.profile)
    run = uuid.uuid4().hex  # in every input: nothing from an earlier run is cached
    try:
        with ExitStack() as stack:
            hub = Hub(work / "hub")
            short = Hub(work / "hub-short-lease", env={"KACHERY_HUB_TASK_LEASE": f"{args.lease:g}"})
            anchor = BareApp("bench_tasks_anchor:task_anchor_app")
            stack.callback(lambda: stop(anchor.proc))
            stack.callback(hub.stop)
            stack.callback(short.stop)
            hub.start()
            short.start()
            anchor.start()
            envs = {name: signed_in_env(work, name, hub) for name in ("backend", "requester")}
            short_envs = {name: signed_in_env(work, "short-" + name, short)
                          for name in ("backend", "backend-2", "requester")}

            print(f"\n1-3. request -> result ({args.requests} requests one at a time, +{args.warmup} warm-up), "
                  f"cached, {args.tasks:,} tasks with {args.workers} workers", flush=True)
            lat, rates = measure_requests(runner, args, anchor, hub, envs, run)
            print(f"\n4. a backend SIGKILLed mid-task, lease {args.lease:g} s, {args.kills} time(s)", flush=True)
            rec = measure_recovery(runner, args, short, short_envs, run)
            hub_rss_mib = int(Path(f"/proc/{hub.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
        print(f"\n1-2. request -> result, one at a time ({args.requests} each; bare and ours interleaved "
              "in one requester process)")
        print(latency_table(lat))
        print(f"\n3. {args.tasks:,} small tasks, {args.workers} workers")
        print(rate_table(rates))
        print(f"\n4. backend SIGKILLed mid-task, another finishes the job (lease {args.lease:g} s)")
        print(recovery_table(rec))
        print(f"\nhub peak RSS over parts 1-3: {hub_rss_mib:.0f} MiB")
        aim_lines = aims(args, lat, rates, rec)
        print("\n" + "\n".join(aim_lines))
        profiles = {label: hotspots(path) for label, path in runner.profiles.items()}
        for label, lines in profiles.items():
            print(f"\nprofile, {label}:")
            print("\n".join(lines))
        save_results("tasks", {
            "args": vars(args), "latency": lat, "throughput": rates, "recovery": rec,
            "hub_peak_rss_mib": hub_rss_mib, "aims": aim_lines, "profiles": profiles,
        })
    except BaseException:
        print_log_tails(work)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
