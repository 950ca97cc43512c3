"""A feed client in a process of its own, for the process-level feed tests.

Run as ``python feed_worker.py COMMAND --hub URL [--token T] --feed ID ...``: the
process uses its own ``KACHERY_CLOUD_DIR`` (set by whoever starts it), signs in
with the token (or reads anonymously when ``KACHERY_CLOUD_EPHEMERAL`` is set) and
prints one JSON object a line, each with an ``event`` key (:mod:`child_process`).
:class:`Worker` starts one and collects those lines as they come.

Commands:
  append   appends ``--count`` messages ``{"w": writer, "i": i}``, singly or in small batches
           (``--pattern``), printing the numbers each call got; ``--retry-seconds`` retries a call
           the hub did not answer (a restart) for that long
  next     ``get_next_messages(timeout_sec=...)`` from ``--start``, once
  next-loop  ``get_next_messages`` until ``--total`` messages came
  follow   ``follow(--start)`` until ``--total`` messages came (or an error ends it)
  read     the whole feed by ``get_messages`` and by ``iter_messages`` (``--page`` messages a page)
  probe    what this client may do with the feed: load, read, can_append, append
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import child_process
from child_process import emit, error_fields, run_command, sign_in

#: Batch sizes the mixed pattern cycles through (1 = append_message).
MIXED = (1, 3, 1, 7, 1, 2, 5)


def _feed(args: argparse.Namespace) -> Any:
    import kachery_core as kc

    sign_in(args.hub, args.token)
    return kc.load_feed(args.feed)


def cmd_append(args: argparse.Namespace) -> None:
    import kachery_core as kc

    feed = _feed(args)
    sizes = MIXED if args.pattern == "mixed" else (1,)
    i = k = 0
    emit("ready")
    while args.go and not os.path.exists(args.go):
        time.sleep(0.01)
    while i < args.count:
        size = min(sizes[k % len(sizes)], args.count - i)
        k += 1
        items = list(range(i, i + size))
        deadline = time.monotonic() + args.retry_seconds
        retried = 0
        while True:
            try:
                if size == 1:
                    numbers = [feed.append_message({"w": args.writer, "i": items[0]})]
                else:
                    numbers = feed.append_messages([{"w": args.writer, "i": j} for j in items])
                break
            except (kc.HubUnavailableError, kc.HubServerError):
                if time.monotonic() > deadline:
                    raise
                retried += 1
                time.sleep(0.05)
        emit("appended", items=items, numbers=numbers, retried=retried)
        i += size
        if args.pause:
            time.sleep(args.pause)
    emit("done")


def cmd_next(args: argparse.Namespace) -> None:
    feed = _feed(args)
    feed.set_position(args.start)
    emit("waiting", position=feed.current_message_number)
    t0 = time.monotonic()
    messages = feed.get_next_messages(timeout_sec=args.timeout)
    emit("got", messages=messages, elapsed=time.monotonic() - t0, position=feed.current_message_number)


def cmd_next_loop(args: argparse.Namespace) -> None:
    feed = _feed(args)
    emit("ready")
    got = 0
    while got < args.total:
        messages = feed.get_next_messages(timeout_sec=args.timeout)
        if not messages:
            emit("timed_out", got=got)
            return
        got += len(messages)
        emit("got", messages=messages)
    emit("done", position=feed.current_message_number)


def cmd_follow(args: argparse.Namespace) -> None:
    feed = _feed(args)
    emit("ready")
    got = 0
    kwargs: dict[str, Any] = {}
    if args.reconnect is not None:
        kwargs["reconnect_seconds"] = args.reconnect
    stream = feed.follow(args.start, **kwargs)
    try:
        for m in stream:
            emit("msg", n=m.number, m=m.message, user=m.user, time=m.time,
                  reconnects=getattr(stream, "reconnects", None))
            got += 1
            if got >= args.total:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    emit("done")


def cmd_read(args: argparse.Namespace) -> None:
    feed = _feed(args)
    bodies = feed.get_messages()
    count = feed.get_num_messages()
    iterated = [[m.number, m.message] for m in feed.iter_messages()]
    emit("read", get=bodies, iter=iterated, count=count)


def cmd_probe(args: argparse.Namespace) -> None:
    """Each step's result or error, so one process shows all a client may and may not do."""
    import kachery_core as kc

    sign_in(args.hub, args.token)
    steps: dict[str, Callable[[], Any]] = {}
    feed: list[Any] = []

    def load() -> str:
        feed.append(kc.load_feed(args.feed))
        return str(feed[0].feed_id)

    steps["load"] = load
    steps["count"] = lambda: feed[0].get_num_messages()
    steps["get"] = lambda: feed[0].get_messages()
    steps["next"] = lambda: feed[0].get_next_messages(timeout_sec=0)
    steps["follow"] = lambda: _first_followed(feed[0])
    steps["can_append"] = lambda: feed[0].can_append()
    steps["append"] = lambda: feed[0].append_message({"probe": True})
    for name, step in steps.items():
        try:
            emit("step", name=name, ok=True, value=step())
        except Exception as e:  # the point: report it, go on
            emit("step", name=name, ok=False, error=error_fields(e))
            if name == "load":
                break
    emit("done")


def _first_followed(feed: Any) -> dict[str, Any]:
    stream = feed.follow(0)
    try:
        m = next(iter(stream))
    finally:
        stream.close()
    return {"n": m.number, "m": m.message, "user": m.user}


def main(argv: list[str] | None = None) -> int:
    parser, sub, common = child_process.parser("feed_worker", "--feed")
    p = sub.add_parser("append", parents=[common])
    p.add_argument("--writer", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pattern", choices=("mixed", "single"), default="mixed")
    p.add_argument("--retry-seconds", type=float, default=0.0)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--go", help="a file to wait for before the first append (a start line for several writers)")
    p = sub.add_parser("next", parents=[common])
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--timeout", type=float, required=True)
    p = sub.add_parser("next-loop", parents=[common])
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("follow", parents=[common])
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--reconnect", type=float)
    sub.add_parser("read", parents=[common])
    sub.add_parser("probe", parents=[common])
    args = parser.parse_args(argv)
    command = {"append": cmd_append, "next": cmd_next, "next-loop": cmd_next_loop, "follow": cmd_follow,
               "read": cmd_read, "probe": cmd_probe}[args.command]
    return run_command(command, args)


# ---- the side that starts workers (imported by the tests)


class Worker(child_process.Worker):
    """One ``feed_worker.py`` process with its own kachery directory; its JSON lines in ``events``."""

    SCRIPT = Path(__file__).resolve()

    def messages(self) -> Iterator[dict[str, Any]]:
        """The ``msg`` events (follow) in the order they came."""
        yield from self.of("msg")


if __name__ == "__main__":
    sys.exit(main())
