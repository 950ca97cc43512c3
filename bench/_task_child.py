"""One side of a ``bench_tasks.py`` measurement, in a process of its own.

Usage: ``python _task_child.py ROLE ARGS_JSON RESULT_JSON``. Hub roles use
kachery_core configured by the environment (KACHERY_CLOUD_DIR, KACHERY_HUB_URL);
results go to RESULT_JSON, not stdout. A child the parent must wait for prints
``ready`` on stdout once it is set up.

- ``backend``: a ``TaskBackend`` serving ``bench.square`` (``x * x``), or
  ``bench.stall`` that never returns (``mode`` "stall": it prints ``started`` and
  waits to be killed) or returns at once (``mode`` "finish"); runs until SIGTERM.
- ``request``: ``request_task`` of new calculations one at a time, then of the
  same ones again (cached), interleaved with the bare round trip
  (``POST /calc`` of :mod:`bench_tasks_anchor`) so both see the same machine.
- ``throughput``: ``submit_task`` for all, then ``result()`` of each (within
  ``budget_s``; those finished by then are counted).
- ``dask``: a Dask LocalCluster in this process: ``client.submit(f, x).result()``
  one at a time, then ``client.map`` + ``client.gather``.
- ``kill-request``: submits one ``bench.stall`` job, prints ``ready``, waits for
  its result and notes ``time.time()`` when it has it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _child import run_role

READY = "ready"
SQUARE = "bench.square"
STALL = "bench.stall"
RESULT_TIMEOUT_S = 300.0


def square(x: int, run: str) -> int:
    """The trivial calculation: every contender computes this."""
    return x * x


def _print(*words: object) -> None:
    print(*words, flush=True)


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


# ---------------------------------------------------------------- backend


def backend(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def stall(run: str, i: int) -> int:
        _print("started", i)
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while time.monotonic() < deadline and not kc.task_cancel_requested():
            time.sleep(0.05)
        raise RuntimeError("the stalled backend was not killed")

    def finish(run: str, i: int) -> int:
        return os.getpid()

    b = kc.TaskBackend(num_workers=a["num_workers"], label=a["mode"])
    if a["mode"] == "square":
        b.register_task_handler(task_type="calculation", task_name=SQUARE, task_function=square)
    else:
        b.register_task_handler(task_type="calculation", task_name=STALL,
                                task_function=stall if a["mode"] == "stall" else finish)
    b.start()
    try:
        deadline = time.monotonic() + 30
        while not any(x.get("backend_id") == b.backend_id for x in kc.list_task_backends()):
            if time.monotonic() > deadline:
                raise RuntimeError("the hub does not list this backend")
            time.sleep(0.05)
        _print(READY)
        stopping.wait()
    finally:
        b.stop(timeout=30)
    return {"backend_id": b.backend_id, "pid": os.getpid()}


# ---------------------------------------------------------------- requests


def request(a: dict[str, Any]) -> dict[str, Any]:
    """New calculations one at a time, then the same again (cached), each beside a bare round trip."""
    import httpx2

    import kachery_core as kc

    run, warmup, n = a["run"], a["warmup"], a["n"]
    http = httpx2.Client(timeout=30)
    url = a["anchor_url"] + "/calc"

    def anchor(x: int) -> int:
        r = http.post(url, json={"x": x, "run": run})
        r.raise_for_status()
        return int(r.json()["result"])

    def ours(x: int) -> int:
        return int(kc.request_task(task_type="calculation", task_name=SQUARE, task_input={"x": x, "run": run},
                                   timeout_sec=60))

    out: dict[str, list[float]] = {"anchor_s": [], "new_s": [], "cached_s": []}

    def both(x: int, ours_name: str, keep: bool) -> None:
        for name, call in (("anchor_s", anchor), (ours_name, ours)):
            seconds, value = _timed(lambda: call(x))
            if value != x * x:
                raise RuntimeError(f"{name}: {x} squared is not {value!r}")
            if keep:
                out[name].append(seconds)

    for x in range(warmup + n):
        both(x, "new_s", keep=x >= warmup)
    for x in range(warmup, warmup + n):  # the measured ones again: each is a finished calculation now
        both(x, "cached_s", keep=True)
    return out


def throughput(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    def submit(i: int, run: str) -> Any:
        return kc.submit_task(task_type="calculation", task_name=SQUARE, task_input={"x": i, "run": run})

    for h in [submit(i, a["run"] + "-warmup") for i in range(a["warmup"])]:
        h.result(timeout=RESULT_TIMEOUT_S)
    start = time.perf_counter()
    deadline = start + a["budget_s"]
    handles = [submit(i, a["run"]) for i in range(a["count"])]
    submitted = time.perf_counter() - start
    done = 0
    for i, h in enumerate(handles):
        try:
            value = h.result(timeout=max(0.001, deadline - time.perf_counter()))
        except kc.TaskTimeoutError:
            break  # over budget: the rate of what finished is reported
        if value != i * i:
            raise RuntimeError(f"task {i}: wrong result")
        done += 1
    return {"seconds": time.perf_counter() - start, "submit_seconds": submitted, "count": done,
            "requested": a["count"]}


def throughput_batch(a: dict[str, Any]) -> dict[str, Any]:
    """Ours as Dask's map + gather: ``submit_tasks`` for all, then ``gather_tasks``."""
    import kachery_core as kc

    def inputs(run: str, n: int) -> list[dict[str, Any]]:
        return [{"x": i, "run": run} for i in range(n)]

    kc.gather_tasks(kc.submit_tasks(task_type="calculation", task_name=SQUARE,
                                    task_inputs=inputs(a["run"] + "-warmup", a["warmup"])), timeout=RESULT_TIMEOUT_S)
    start = time.perf_counter()
    handles = kc.submit_tasks(task_type="calculation", task_name=SQUARE, task_inputs=inputs(a["run"], a["count"]))
    submitted = time.perf_counter() - start
    try:
        values = kc.gather_tasks(handles, timeout=a["budget_s"])
    except kc.TaskTimeoutError:  # over budget: the rate of what finished is reported
        values = [h._record.get("result") for h in handles if h._record["status"] == "finished"]
    done = len(values)
    if values[:done] != [i * i for i in range(done)] and done == a["count"]:
        raise RuntimeError("wrong results")
    return {"seconds": time.perf_counter() - start, "submit_seconds": submitted, "count": done,
            "requested": a["count"]}


def dask_cluster(a: dict[str, Any]) -> dict[str, Any]:
    """Dask's own way: a LocalCluster of ``workers`` processes, the scheduler in this process."""
    from dask.distributed import Client, LocalCluster

    run, warmup, n = a["run"], a["warmup"], a["n"]
    cluster = LocalCluster(n_workers=a["workers"], threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                           dashboard_address=None)
    with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        latencies = []
        for i in range(warmup + n):
            seconds, value = _timed(lambda: client.submit(square, i, run).result())
            if value != i * i:
                raise RuntimeError(f"dask: {i} squared is not {value!r}")
            if i >= warmup:
                latencies.append(seconds)
        client.gather(client.map(square, range(a["warmup"]), run=run + "-warmup"))
        xs = list(range(a["count"]))
        start = time.perf_counter()
        results = client.gather(client.map(square, xs, run=run + "-map"))
        seconds = time.perf_counter() - start
        if results != [x * x for x in xs]:
            raise RuntimeError("dask map: wrong results")
    return {"latencies_s": latencies, "seconds": seconds, "count": a["count"]}


def kill_request(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    h = kc.submit_task(task_type="calculation", task_name=STALL, task_input={"run": a["run"], "i": a["i"]})
    _print(READY, h.job_id)
    value = h.result(timeout=RESULT_TIMEOUT_S)
    done = time.time()
    return {"result_time": done, "result": value, "job": h.info()}


ROLES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "backend": backend, "request": request, "throughput": throughput, "throughput-batch": throughput_batch, "dask": dask_cluster, "kill-request": kill_request,
}


def main(argv: list[str]) -> None:
    run_role(ROLES, argv)


if __name__ == "__main__":
    main(sys.argv)
