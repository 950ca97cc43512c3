"""Child processes of ``bench_load_followers.py``: many feed followers in one process, or the appender.

``python _load_follow_child.py follow ARGS_JSON``: opens ``count`` event streams
(``GET path`` on ``url``, signed with the key of ``$KACHERY_CLOUD_DIR`` when ``sign``)
on one asyncio loop, prints ``ready`` once every stream has answered 200, then ``got N T``
when all of its streams have been handed message N (T: ``time.time()`` when the last one
was). On ``stop`` (a line on stdin) it prints ``result {json}``: streams connected, refused,
ended early, messages out of order, how many streams got each message, its CPU seconds.

``python _load_follow_child.py append ARGS_JSON``: prints ``ready``; for each line ``N``
on stdin appends ``{"n": N}`` (``kind`` ``hub``: ``Feed.append_message`` as signed in
through ``$KACHERY_CLOUD_DIR``; ``anchor``: ``POST /push``) and prints ``sent N T0 T1``
(``time.time()`` before and after the call).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load_http import Connection, HttpError, request_bytes, self_cpu_seconds, signed_headers  # noqa: E402


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def follow(args: dict[str, Any]) -> None:
    count, url, path = int(args["count"]), args["url"], args["path"]
    keys = None
    if args.get("sign"):
        from kachery_core._identity import load_client_keys

        keys = load_client_keys(create=False)
        assert keys is not None, "the client directory has no key"
    got: Counter[int] = Counter()
    last: dict[int, float] = {}
    refused: Counter[str] = Counter()
    state = {"connected": 0, "ended": 0, "disorder": 0}
    all_up = asyncio.Event()
    answered = [0]

    def handle(event: bytes, expect: list[int]) -> None:
        kind, data = b"", b""
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                kind = line[6:].strip()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if kind != b"messages":
            return
        now = time.time()
        for m in json.loads(data)["messages"]:
            n = int(m["n"])
            if n != expect[0]:
                state["disorder"] += 1
            expect[0] = n + 1
            got[n] += 1
            if now > last.get(n, 0.0):
                last[n] = now
            if got[n] == count:
                say(f"got {n} {last[n]:.6f}")

    async def one() -> None:
        conn = Connection(url)
        headers = {"Accept": "text/event-stream"}
        if keys is not None:
            headers.update(signed_headers(keys, "GET", conn.host_header, path))
        try:
            await conn.send(request_bytes("GET", conn.host_header, path, headers))
            status, head = await conn.head()
        except (HttpError, OSError) as e:
            refused[type(e).__name__] += 1
            status, head = 0, {}
        answered[0] += 1
        if status == 200:
            state["connected"] += 1
        else:
            if status:
                refused[str(status)] += 1
        if answered[0] == count:
            all_up.set()
        if status != 200:
            conn.close()
            return
        chunked = head.get("transfer-encoding", "").lower() == "chunked"
        assert conn.reader is not None
        buf, expect = b"", [0]
        try:
            while True:
                chunk = await conn.chunk() if chunked else await conn.reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while (end := buf.find(b"\n\n")) >= 0:
                    handle(buf[:end], expect)
                    buf = buf[end + 2:]
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.close()
        state["ended"] += 1

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await all_up.wait()
    say("ready")
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
    ended_early = state["ended"]
    for t in tasks:
        t.cancel()
    say("result " + json.dumps({"connected": state["connected"], "refused": dict(refused), "ended_early": ended_early,
                                "out_of_order": state["disorder"], "got": {str(k): v for k, v in got.items()},
                                "cpu_s": self_cpu_seconds()}))


def append(args: dict[str, Any]) -> None:
    if args["kind"] == "hub":
        import kachery_core as kc

        feed = kc.load_feed(args["feed_id"])

        def send(n: int) -> None:
            feed.append_message({"n": n})
    else:
        import httpx2

        client = httpx2.Client(timeout=30)
        push = args["url"] + "/push"

        def send(n: int) -> None:
            r = client.post(push, content=b'{"n":%d}' % n, headers={"content-type": "application/json"})
            r.raise_for_status()
    say("ready")
    for line in sys.stdin:
        n = int(line)
        t0 = time.time()
        send(n)
        say(f"sent {n} {t0:.6f} {time.time():.6f}")


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    if role == "follow":
        try:
            import uvloop
        except ImportError:
            asyncio.run(follow(args))
        else:
            uvloop.run(follow(args))
    else:
        append(args)


if __name__ == "__main__":
    main()
