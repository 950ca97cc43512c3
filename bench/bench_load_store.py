"""200 concurrent clients storing small files: one hub replica, two behind HAProxy, the embedded default, anchors.

Starts, on free 127.0.0.1 ports: a throwaway PostgreSQL cluster and a SeaweedFS S3
server (as the tests start them, ``tests/hub_fixtures.py``), then one after the other:

- anchor, 1 process: the bare FastAPI app ``_load_anchor:store_app`` on uvicorn behind HAProxy:
  ``PUT /files/{sha1}`` with the bytes; it checks the sha1, ``put_object``s them to S3 (boto3) and
  inserts a row into PostgreSQL (SQLAlchemy on psycopg), the minimal work of a stored file;
- ours, 1 replica: ``kachery-hub serve`` on PostgreSQL + S3 behind HAProxy (``tests/lb_fixtures.py``'s
  ``run_cluster``, its HAProxy configuration);
- anchor, 2 processes, and ours, 2 replicas: the same with two behind the same HAProxy configuration;
- ours, embedded default: one ``kachery-hub serve`` on SQLite + a folder (no balancer).

A file stored on an S3 hub is what ``store_file`` sends for a small file: ``POST
.../files/{sha1}/upload`` (signed; the hub answers a presigned URL of its own upload id), the bytes
``PUT`` straight to that URL in SeaweedFS (with the ``x-amz-checksum-sha1`` the hub requires), then
``POST .../complete`` (signed; the hub asks the store for the object's sha1 and records the file).
On the embedded default it is one signed ``PUT .../files/{sha1}`` with the bytes.

The load generator is this process: ``--clients`` clients, each its own Ed25519 key registered
with one sign-in token (the hubs run with ``KACHERY_HUB_RATE_LIMIT=0`` so 200 sign-ins in a second
are not refused), each with its own keep-alive connections (to the balancer or hub, and to S3),
on one asyncio (uvloop) loop. Each stores ``--files`` files of 1–4 KiB of random bytes (distinct
contents), one after the other; all start together. The contents and the first signed request of
every file are made before the clock starts (the hub accepts a signature within its clock-skew
window, 300 s); ``.../complete``, which names the upload id the hub just gave, is signed when sent.

Reported per contender: files, errors (any answer but 200, any broken connection), wall seconds,
files/s, p50/p99 of one file's whole store, how busy the two CPUs were (``/proc/stat``), and CPU
milliseconds per file of each process involved (``/proc/<pid>/stat``): each hub or anchor process,
HAProxy, PostgreSQL (the postmaster and its backends), SeaweedFS and the generator itself. Aims
printed: errors 0; two replicas >= 1.6 x one replica in files/s (the anchor's own 2-vs-1 ratio, in the
same run, shows what the machine allows).

Run: ``.venv/bin/python bench/bench_load_store.py [--quick] [--clients 200] [--files 15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from _load_http import (Connection, HttpError, cpu_seconds, find_pid, new_keys, pg_transactions, request_bytes,
                        self_cpu_seconds, signed_headers, tree_cpu_seconds)
from _report import fmt, format_table, load_line, save_results
from bench_hub_common import (KIB, PY_SPY, Hub, Runner, free_port, hotspots, latency_summary, print_log_tails, sampled,
                              start_uvicorn, stop)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

EMAIL = "load@example.org"
AIM_SCALE = 1.6
A1, O1, A2, O2, EMB = ("anchor, 1 process", "ours, 1 replica", "anchor, 2 processes", "ours, 2 replicas",
                       "ours, embedded default (SQLite)")
ANCHOR_TABLE = "CREATE TABLE files (sha1 TEXT PRIMARY KEY, size BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--files", type=int, default=15, help="files each client stores")
    p.add_argument("--min-kib", type=float, default=1)
    p.add_argument("--max-kib", type=float, default=4)
    p.add_argument("--skip-embedded", action="store_true")
    p.add_argument("--profile", action="store_true", help="sample each hub process with py-spy (its own CPU "
                   "makes every figure lower)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 40 clients, 5 files each")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.files = 40, 5
    return args


# ---------------------------------------------------------------- servers

#: tests/lb_fixtures.py checks each replica every 300 ms and takes it out after two checks that
#: fail, a check's whole timeout being that 300 ms (HAProxy's default without ``timeout check``): right
#: for its failover tests, but under this load a saturated server answers ``/api/health`` later than
#: that, and HAProxy then answers 503 "no server is available" to everyone. Here a check may take 5 s.
CHECKS_FAST = "    default-server inter 300ms fall 2 rise 2\n"
CHECKS_LOAD = "    timeout check 5s\n    default-server inter 2s fall 3 rise 2\n"


def use_load_checks() -> None:
    """Give the balancers started here (``run_cluster``'s too) the health checks of :data:`CHECKS_LOAD`."""
    import lb_fixtures  # type: ignore[import-not-found, unused-ignore]

    if CHECKS_FAST not in lb_fixtures.HAPROXY_CONFIG:
        raise SystemExit("tests/lb_fixtures.py's HAProxy configuration changed: update CHECKS_FAST here")
    lb_fixtures.HAPROXY_CONFIG = lb_fixtures.HAPROXY_CONFIG.replace(CHECKS_FAST, CHECKS_LOAD)


@dataclass
class Setup:
    """What one contender's run needs: where to send, how a file goes, and whose CPU to count."""

    url: str
    kind: str  # "s3" (upload, PUT to S3, complete), "hub" (one PUT to the hub), "anchor" (one PUT to the anchor)
    servers: dict[str, int]  # label -> pid of the hub or anchor processes
    token: str = ""
    database: str = ""  # its PostgreSQL database (SQLAlchemy URL), if any


class HaproxyFront:
    """HAProxy with ``tests/lb_fixtures.py``'s configuration in front of ``ports``."""

    def __init__(self, root: Path, ports: list[int]) -> None:
        from lb_fixtures import HAPROXY_CONFIG, REPLICA_HEADER, haproxy_path  # type: ignore[import-not-found, unused-ignore]

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "anchor-haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, header=REPLICA_HEADER, servers="\n".join(
            f"    server r{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(ports))))
        self.log = open(root / "anchor-haproxy.log", "wb")
        self.proc = subprocess.Popen([haproxy_path(), "-f", str(config), "-db"], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait(self, servers: int) -> None:
        import httpx2

        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while len(seen) < servers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy sent to {sorted(seen)} only")
            try:
                r = httpx2.get(self.url + "/api/health", timeout=2)
                if r.status_code == 200:
                    seen.add(r.headers.get("x-kachery-replica", ""))
            except httpx2.TransportError:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


@contextmanager
def anchor_cluster(root: Path, postgres: str, s3: str, processes: int) -> Iterator[Setup]:
    import psycopg
    from hub_fixtures import _fresh_postgres_database, _s3_client  # type: ignore[import-not-found, unused-ignore]

    database = _fresh_postgres_database(postgres)
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(ANCHOR_TABLE)
    bucket = "anchor-" + os.urandom(6).hex()
    _s3_client(s3).create_bucket(Bucket=bucket)
    env = {"BENCH_S3_ENDPOINT": s3, "BENCH_S3_BUCKET": bucket, "BENCH_DATABASE_URL": database}
    procs: list[subprocess.Popen[bytes]] = []
    front: HaproxyFront | None = None
    try:
        ports = [free_port() for _ in range(processes)]
        for port in ports:
            procs.append(start_uvicorn("_load_anchor:store_app", port, env))
        front = HaproxyFront(root, ports)
        front.wait(processes)
        yield Setup(front.url, "anchor", {f"anchor {i + 1}": p.pid for i, p in enumerate(procs)}, database=database)
    finally:
        if front is not None:
            front.stop()
        for p in procs:
            stop(p)


@contextmanager
def hub_cluster(root: Path, postgres: str, s3: str, replicas: int) -> Iterator[Setup]:
    from lb_fixtures import run_cluster

    folder = root / f"cluster-{replicas}"
    folder.mkdir()
    with run_cluster(postgres, s3, folder, replicas=replicas) as cluster:
        pids = {}
        for i, r in enumerate(cluster.replicas):
            assert r.proc is not None
            pids[f"replica {i + 1}"] = r.proc.pid
        yield Setup(cluster.url, "s3", pids, cluster.token(EMAIL), cluster.args[cluster.args.index("--database") + 1])


@contextmanager
def embedded_hub(root: Path) -> Iterator[Setup]:
    hub = Hub(root / "embedded", env={"KACHERY_HUB_RATE_LIMIT": "0"})
    try:
        hub.start()
        yield Setup(hub.url, "hub", {"hub": hub.pid}, hub.token(EMAIL))
    finally:
        hub.stop()


# ---------------------------------------------------------------- the load generator


@dataclass
class Client:
    keys: Any
    files: list[tuple[bytes, str, bytes]]  # content, sha1, the first request (signed)


async def register(setup: Setup, clients: list[Client]) -> str:
    """Sign every client's key in with the token; the user's default project."""
    host = urlsplit(setup.url).netloc
    sem = asyncio.Semaphore(20)
    project = ""

    async def one(c: Client) -> None:
        nonlocal project
        body = json.dumps({"token": setup.token}).encode()
        async with sem:
            conn = Connection(setup.url)
            status, _, answer = await conn.request(request_bytes(
                "POST", host, "/api/clients", {**signed_headers(c.keys, "POST", host, "/api/clients", body),
                                               "Content-Type": "application/json"}, body))
            conn.close()
        if status != 200:
            raise RuntimeError(f"sign-in refused: {status} {answer[:300]!r}")
        project = json.loads(answer)["default_project_id"]

    await asyncio.gather(*(one(c) for c in clients))
    return project


def prepare(setup: Setup, clients: list[Client], project: str, args: argparse.Namespace, seed: int) -> None:
    """Each client's files (random, distinct) and the first request of each, signed now."""
    rnd = random.Random(seed)
    host = urlsplit(setup.url).netloc
    pid = quote(project, safe="")
    for c in clients:
        c.files = []
        for _ in range(args.files):
            data = os.urandom(rnd.randint(int(args.min_kib * KIB), int(args.max_kib * KIB)))
            sha1 = hashlib.sha1(data).hexdigest()
            if setup.kind == "s3":
                target, body = f"/api/projects/{pid}/files/{sha1}/upload", b'{"size":%d}' % len(data)
                raw = request_bytes("POST", host, target, {**signed_headers(c.keys, "POST", host, target, body),
                                                           "Content-Type": "application/json"}, body)
            elif setup.kind == "hub":
                target = f"/api/projects/{pid}/files/{sha1}"
                raw = request_bytes("PUT", host, target,
                                    signed_headers(c.keys, "PUT", host, target, body_sha1=sha1), data)
            else:
                raw = request_bytes("PUT", host, f"/files/{sha1}", {}, data)
            c.files.append((data, sha1, raw))


async def store_all(setup: Setup, clients: list[Client], project: str) -> dict[str, Any]:
    host = urlsplit(setup.url).netloc
    pid = quote(project, safe="")
    latencies: list[float] = []
    phases: dict[str, list[float]] = {"upload": [], "S3 PUT": [], "complete": []}
    errors: Counter[str] = Counter()

    async def one(c: Client) -> None:
        hub = Connection(setup.url)
        s3: Connection | None = None
        for data, sha1, first in c.files:
            start = time.perf_counter()
            try:
                status, _, answer = await hub.request(first)
                if status != 200:
                    errors[f"{status} {answer[:120]!r}"] += 1
                    continue
                if setup.kind == "s3":
                    t1 = time.perf_counter()
                    phases["upload"].append(t1 - start)
                    upload = json.loads(answer)["upload"]
                    url = urlsplit(upload["url"])
                    if s3 is None:
                        s3 = Connection(f"{url.scheme}://{url.netloc}")
                    status, _, answer = await s3.request(request_bytes(
                        "PUT", url.netloc, f"{url.path}?{url.query}", upload["headers"], data))
                    if status != 200:
                        errors[f"S3 {status} {answer[:120]!r}"] += 1
                        continue
                    t2 = time.perf_counter()
                    phases["S3 PUT"].append(t2 - t1)
                    target = f"/api/projects/{pid}/files/{sha1}/complete"
                    body = json.dumps({"label": None, "upload_id": upload["upload_id"]}).encode()
                    status, _, answer = await hub.request(request_bytes(
                        "POST", host, target, {**signed_headers(c.keys, "POST", host, target, body),
                                               "Content-Type": "application/json"}, body))
                    if status != 200:
                        errors[f"complete {status} {answer[:120]!r}"] += 1
                        continue
                    phases["complete"].append(time.perf_counter() - t2)
            except (HttpError, OSError, ValueError) as e:
                errors[f"{type(e).__name__}: {e}"[:160]] += 1
                continue
            latencies.append(time.perf_counter() - start)
        hub.close()
        if s3 is not None:
            s3.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    return {"seconds": time.perf_counter() - start, "latencies": latencies, "errors": dict(errors),
            "phases": {k: latency_summary(v) for k, v in phases.items() if v}}


# ---------------------------------------------------------------- where the cores went


def busy_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def cpu_snapshot(setup: Setup, others: dict[str, tuple[int, bool]]) -> dict[str, float]:
    out = {label: tree_cpu_seconds(pid) for label, pid in setup.servers.items()}
    for label, (pid, tree) in others.items():
        out[label] = tree_cpu_seconds(pid) if tree else cpu_seconds(pid)
    out["generator"] = self_cpu_seconds()
    return out


def run_one(name: str, setup: Setup, args: argparse.Namespace, others: dict[str, tuple[int, bool]],
            seed: int, runner: Runner) -> dict[str, Any]:
    clients = [Client(new_keys(), []) for _ in range(args.clients)]
    loop = asyncio.new_event_loop()
    try:
        project = "" if setup.kind == "anchor" else loop.run_until_complete(register(setup, clients))
        prepare(setup, clients, project, args, seed)
        with ExitStack() as sampling:
            if setup.kind != "anchor":
                for label, pid in setup.servers.items():
                    sampling.enter_context(sampled(runner, f"{name}, {label}", pid))
            xacts0 = pg_transactions(setup.database)
            before, (busy0, total0) = cpu_snapshot(setup, others), busy_cpu_seconds()
            out = loop.run_until_complete(store_all(setup, clients, project))
            after, (busy1, total1) = cpu_snapshot(setup, others), busy_cpu_seconds()
            time.sleep(0.6)  # PostgreSQL's statistics reach pg_stat_database within 500 ms
            xacts = pg_transactions(setup.database) - xacts0
    finally:
        loop.close()
    files = len(out["latencies"])
    errors = sum(out["errors"].values())
    cpu = {label: after[label] - before[label] for label in after}
    result = {
        "files": files, "errors": errors, "error_kinds": out["errors"], "seconds": out["seconds"],
        "files_per_s": files / out["seconds"], "latency": latency_summary(out["latencies"]) if files else None,
        "machine_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
        "cpu_s": cpu, "cpu_ms_per_file": {k: 1000 * v / max(files, 1) for k, v in cpu.items()},
        "db_transactions_per_file": xacts / max(files, 1) if setup.database else None,
        "phases": out["phases"],
    }
    lat = result["latency"] or {}
    print(f"  {name}: {files} files, {errors} errors, {result['files_per_s']:.0f} files/s, p50 "
          f"{fmt(lat.get('p50_ms'), '.1f')} ms, p99 {fmt(lat.get('p99_ms'), '.1f')} ms, CPUs busy "
          f"{100 * (result['machine_busy'] or 0):.0f}%", flush=True)
    if out["phases"]:
        print("    each request: " + ", ".join(f"{k} p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
                                             for k, v in out["phases"].items()))
    for kind, count in list(out["errors"].items())[:5]:
        print(f"    {count} x {kind}")
    return result


def tables(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, r in results.items():
        lat = r["latency"] or {}
        rows.append([name, f"{r['files']:,}", str(r["errors"]), f"{r['seconds']:.1f}", f"{r['files_per_s']:.0f}",
                     fmt(lat.get("p50_ms"), ".1f"), fmt(lat.get("p99_ms"), ".1f"),
                     f"{100 * (r['machine_busy'] or 0):.0f}%", fmt(r["db_transactions_per_file"], ".1f")])
    first = format_table(["contender", "files", "errors", "s", "files/s", "p50 ms", "p99 ms", "CPUs busy",
                          "PostgreSQL transactions/file"], rows)
    labels: list[str] = []
    for r in results.values():
        labels += [k for k in r["cpu_ms_per_file"] if k not in labels]
    rows = []
    for name, r in results.items():
        per = r["cpu_ms_per_file"]
        rows.append([name, *(fmt(per.get(k), ".2f") for k in labels), f"{sum(per.values()):.2f}"])
    second = format_table(["CPU ms per file", *labels, "sum"], rows)
    return first + "\n\n" + second


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile and not Path(PY_SPY).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    print(f"before: {load_line()}")
    from hub_fixtures import S3_KEYS, _run_postgres, _run_s3

    use_load_checks()
    print("HAProxy: tests/lb_fixtures.py's configuration, but health checks every 2 s with a 5 s timeout "
          "(its 300 ms takes a saturated server out)")
    os.environ.update({**S3_KEYS, "AWS_EC2_METADATA_DISABLED": "true", "KACHERY_HUB_RATE_LIMIT": "0"})
    print("hubs run with KACHERY_HUB_RATE_LIMIT=0 (the sign-in rate limit off: every client signs in at once "
          "from 127.0.0.1)")
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-store-", dir=os.environ.get("BENCH_TMP")))
    results: dict[str, dict[str, Any]] = {}
    runner = Runner(work, "", profile=args.profile)
    print(f"{args.clients} clients x {args.files} files of {args.min_kib:g}-{args.max_kib:g} KiB each", flush=True)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        with ExitStack() as stack:
            postgres = stack.enter_context(_run_postgres())
            s3 = stack.enter_context(_run_s3())
            pg_port, s3_port = urlsplit(postgres).port, urlsplit(s3).port
            pg_pid = find_pid("bin/postgres", f"-p {pg_port}")
            weed_pid = find_pid("weed", f"-s3.port={s3_port}")
            assert pg_pid and weed_pid, "PostgreSQL's or SeaweedFS's process not found"
            base: dict[str, tuple[int, bool]] = {"postgres": (pg_pid, True), "seaweedfs": (weed_pid, False)}
            plan = [A1, O1, A2, O2] + ([] if args.skip_embedded else [EMB])
            for seed, name in enumerate(plan):
                setups = {A1: anchor_cluster, A2: anchor_cluster, O1: hub_cluster, O2: hub_cluster}
                servers = 2 if name in (A2, O2) else 1
                start = embedded_hub(work) if name == EMB else setups[name](work, postgres, s3, servers)
                with start as setup:
                    others = dict(base)
                    if setup.kind != "hub":
                        balancer = find_pid("haproxy", f"{work}/")
                        if balancer:
                            others["haproxy"] = (balancer, False)
                    results[name] = run_one(name, setup, args, others, seed, runner)
        print(f"\n{args.clients} concurrent clients, {args.files} files of {args.min_kib:g}-{args.max_kib:g} KiB each "
              "(p50/p99: one file's whole store)")
        print(tables(results))
        lines = []
        for name, r in results.items():
            lines.append(f"{name}: errors {r['errors']} (aim 0): {'met' if r['errors'] == 0 else 'NOT met'}")
        if O1 in results and O2 in results:
            ours = results[O2]["files_per_s"] / results[O1]["files_per_s"]
            anchor = results[A2]["files_per_s"] / results[A1]["files_per_s"]
            lines.append(f"ours, 2 replicas / 1 replica: {ours:.2f} x files/s (aim >= {AIM_SCALE}): "
                         f"{'met' if ours >= AIM_SCALE else 'NOT met'}; the anchor's 2 / 1 in the same run: "
                         f"{anchor:.2f} x")
            lines.append(f"ours / anchor files/s: 1 replica {results[O1]['files_per_s'] / results[A1]['files_per_s']:.2f}, "
                         f"2 replicas {results[O2]['files_per_s'] / results[A2]['files_per_s']:.2f}")
        print("\n" + "\n".join(lines))
        profiles = {label: hotspots(path) for label, path in runner.profiles.items()}
        for label, profile in profiles.items():
            print(f"\nprofile, {label}:")
            print("\n".join(profile))
        save_results("load-store", {"args": vars(args), "results": results, "aims": lines, "profiles": profiles})
    except BaseException:
        print_log_tails(work, 30)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
