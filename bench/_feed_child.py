"""One side of a ``bench_feeds.py`` measurement, in a process of its own.

Usage: ``python _feed_child.py ROLE ARGS_JSON RESULT_JSON``. ROLE is
``<system>-<job>``: system ``hub`` (kachery_core, configured by the environment:
KACHERY_CLOUD_DIR and KACHERY_HUB_URL), ``sse`` (the bare app of
:mod:`bench_feeds_anchor`) or ``redis`` (redis-py against a local redis-server);
job ``send`` / ``follow`` (latency), ``append`` (batched throughput) or ``read``
(catch-up). Results go to RESULT_JSON, not stdout: a follower prints ``ready``
on stdout once it is set up, and the parent starts the sender then.

Latency: the sender puts ``time.time()`` in each message; the follower takes
``time.time()`` when the message is handed to it; both on this machine's clock.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from _child import reset_peak_rss, run_role, status_kib

READY = "ready"
FOLLOW_TIMEOUT_S = 300.0
FIELD = b"m"  # its one field: the message's JSON


# ---------------------------------------------------------------- messages


def filler(size: int) -> str:
    """The padding that makes a throughput message about ``size`` bytes of compact JSON."""
    base = len(json.dumps({"i": 999_999, "pad": "", "t": time.time()}, separators=(",", ":")))
    return "x" * max(0, size - base)


def batch_of(first: int, count: int, pad: str) -> list[dict[str, Any]]:
    now = time.time()
    return [{"i": i, "pad": pad, "t": now} for i in range(first, first + count)]


def _compact(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


# ---------------------------------------------------------------- latency: send


def _paced(n: int, warmup: int, interval_s: float, send: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Send ``warmup + n`` messages one at a time, ``interval_s`` apart on average (jittered)."""
    rng = random.Random(0)
    for i in range(warmup + n):
        send({"i": i, "t": time.time(), "warmup": i < warmup})
        time.sleep(interval_s * rng.uniform(0.5, 1.5))
    return {"sent": warmup + n}


def hub_send(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    feed = kc.load_feed(a["uri"])
    return _paced(a["n"], a["warmup"], a["interval_s"], feed.append_message)


def sse_send(a: dict[str, Any]) -> dict[str, Any]:
    import httpx2

    with httpx2.Client(timeout=30) as http:
        url = a["url"] + "/push"
        return _paced(a["n"], a["warmup"], a["interval_s"],
                      lambda m: http.post(url, content=_compact(m)).raise_for_status())


def redis_send(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=a["port"])
    return _paced(a["n"], a["warmup"], a["interval_s"], lambda m: r.xadd(a["stream"], {FIELD: _compact(m)}))


# ---------------------------------------------------------------- latency: follow


def _ready() -> None:
    print(READY, flush=True)


def _collect(n: int, warmup: int, received: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Latencies (s) of the ``n`` measured messages, in order; checks none is lost or repeated."""
    latencies: list[float] = []
    expected = 0
    for message in received:
        now = time.time()
        if message["i"] != expected:
            raise RuntimeError(f"got message {message['i']}, expected {expected}")
        expected += 1
        if not message["warmup"]:
            latencies.append(now - message["t"])
        if expected == warmup + n:
            break
    if expected != warmup + n:
        raise RuntimeError(f"got {expected} of {warmup + n} messages")
    return {"latencies_s": latencies}


def hub_follow(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    feed = kc.load_feed(a["uri"])
    stop = threading.Event()
    timer = threading.Timer(FOLLOW_TIMEOUT_S, stop.set)
    timer.daemon = True
    timer.start()

    def by_follow() -> Generator[dict[str, Any], None, None]:
        it = feed.follow(0, stop=stop)
        try:
            for fm in it:
                yield fm.message
        finally:
            it.close()

    def by_get_next() -> Generator[dict[str, Any], None, None]:
        while not stop.is_set():
            yield from feed.get_next_messages(timeout_sec=30)

    received = by_follow() if a["mode"] == "follow" else by_get_next()
    _ready()
    try:
        return _collect(a["n"], a["warmup"], received)
    finally:
        stop.set()
        received.close()


def sse_follow(a: dict[str, Any]) -> dict[str, Any]:
    import httpx2

    def received(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if line.startswith("data: "):
                yield json.loads(line[6:])

    with httpx2.Client(timeout=httpx2.Timeout(30, read=FOLLOW_TIMEOUT_S)) as http:
        with http.stream("GET", a["url"] + "/events") as r:
            r.raise_for_status()
            _ready()
            return _collect(a["n"], a["warmup"], received(r.iter_lines()))


def redis_follow(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=a["port"])
    r.ping()

    def received() -> Iterator[dict[str, Any]]:
        last = b"0"
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while time.monotonic() < deadline:
            streams: Any = r.xread({a["stream"]: last}, block=30_000, count=1000)
            for _, entries in streams:
                for entry_id, fields in entries:
                    last = entry_id
                    yield json.loads(fields[FIELD])

    _ready()
    return _collect(a["n"], a["warmup"], received())


# ---------------------------------------------------------------- batched append


def _appended(total: int, batch: int, size: int, append: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    """``total`` messages in batches of ``batch``; only the append calls are timed."""
    pad = filler(size)
    seconds: list[float] = []
    for first in range(0, total, batch):
        messages = batch_of(first, min(batch, total - first), pad)
        start = time.perf_counter()
        append(messages)
        seconds.append(time.perf_counter() - start)
    return {"seconds": sum(seconds), "batch_seconds": seconds, "count": total,
            "message_bytes": len(_compact(batch_of(0, 1, pad)[0]))}


def hub_append(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    feed = kc.load_feed(a["uri"])
    return _appended(a["total"], a["batch"], a["size"], feed.append_messages)


def sse_append(a: dict[str, Any]) -> dict[str, Any]:
    import httpx2

    with httpx2.Client(timeout=60) as http:
        url = a["url"] + "/batch"
        return _appended(a["total"], a["batch"], a["size"],
                         lambda ms: http.post(url, content=json.dumps({"messages": ms}).encode()).raise_for_status())


def redis_append(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=a["port"])

    def append(messages: list[dict[str, Any]]) -> None:
        pipe = r.pipeline(transaction=False)
        for m in messages:
            pipe.xadd(a["stream"], {FIELD: _compact(m)})
        pipe.execute()

    return _appended(a["total"], a["batch"], a["size"], append)


# ---------------------------------------------------------------- catch-up read


def _read(total: int, setup: Callable[[], Iterator[dict[str, Any]]]) -> dict[str, Any]:
    """Time reading ``total`` messages (checking their order) and the peak RSS growth meanwhile."""
    messages = setup()
    reset = reset_peak_rss()
    rss = status_kib("VmRSS")
    start = time.perf_counter()
    count = 0
    for m in messages:
        if m["i"] != count:
            raise RuntimeError(f"got message {m['i']}, expected {count}")
        count += 1
        if count == total:
            break
    seconds = time.perf_counter() - start
    if count != total:
        raise RuntimeError(f"read {count} of {total} messages")
    peak = status_kib("VmHWM")
    return {"seconds": seconds, "count": count, "rss_before_kib": rss, "peak_rss_kib": peak,
            "peak_rss_growth_kib": max(0, peak - rss), "peak_was_reset": reset}


def hub_read(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    feed = kc.load_feed(a["uri"])
    feed.get_num_messages()  # the connection is open before the clock starts
    stop = threading.Event()

    def setup() -> Iterator[dict[str, Any]]:
        if a["mode"] == "iter":
            it = feed.iter_messages(0, a["total"])
        else:
            it = feed.follow(0, stop=stop)
        for fm in it:
            yield fm.message
            if fm.number == a["total"] - 1:
                break
        stop.set()

    return _read(a["total"], setup)


def sse_read(a: dict[str, Any]) -> dict[str, Any]:
    import httpx2

    http = httpx2.Client(timeout=60)
    http.get(a["url"] + "/health").raise_for_status()

    def setup() -> Iterator[dict[str, Any]]:
        start = 0
        while start < a["total"]:
            r = http.get(a["url"] + "/messages", params={"start": start, "limit": a["page"]})
            r.raise_for_status()
            page = r.json()["messages"]
            if not page:
                return
            for m in page:
                yield m["message"]
            start += len(page)

    return _read(a["total"], setup)


def redis_read(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=a["port"])
    r.ping()

    def setup() -> Iterator[dict[str, Any]]:
        low = "-"
        while True:
            entries: Any = r.xrange(a["stream"], low, "+", count=a["page"])
            if not entries:
                return
            for _, fields in entries:
                yield json.loads(fields[FIELD])
            low = "(" + entries[-1][0].decode()

    return _read(a["total"], setup)


# ---------------------------------------------------------------- setup


def hub_create(a: dict[str, Any]) -> dict[str, Any]:
    import kachery_core as kc

    feed = kc.create_feed(label=a.get("label"))
    return {"uri": feed.uri}


ROLES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hub-create": hub_create,
    "hub-send": hub_send, "sse-send": sse_send, "redis-send": redis_send,
    "hub-follow": hub_follow, "sse-follow": sse_follow, "redis-follow": redis_follow,
    "hub-append": hub_append, "sse-append": sse_append, "redis-append": redis_append,
    "hub-read": hub_read, "sse-read": sse_read, "redis-read": redis_read,
}


def main(argv: list[str]) -> None:
    run_role(ROLES, argv)


if __name__ == "__main__":
    main(sys.argv)
