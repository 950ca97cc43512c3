"""A feed client in a process of its own, for the process-level feed tests.

Run as ``python feed_worker.py COMMAND --hub URL [--token T] --feed ID ...``: the
process uses its own ``KACHERY_CLOUD_DIR`` (set by whoever starts it), signs in
with the token (or reads anonymously when ``KACHERY_CLOUD_EPHEMERAL`` is set) and
prints one JSON object a line, each with an ``event`` key. :class:`Worker` starts
one and collects those lines as they come.

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
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Batch sizes the mixed pattern cycles through (1 = append_message).
MIXED = (1, 3, 1, 7, 1, 2, 5)


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _error(e: BaseException) -> dict[str, Any]:
    return {"type": type(e).__name__, "bases": [c.__name__ for c in type(e).__mro__],
            "status": getattr(e, "status", None), "code": getattr(e, "code", None), "message": str(e),
            "where": traceback.format_exception(e)[-4:]}


def _feed(args: argparse.Namespace) -> Any:
    import kachery_core as kc

    if os.environ.get("KACHERY_CLOUD_EPHEMERAL"):
        os.environ["KACHERY_HUB_URL"] = args.hub
    else:
        kc.init(hub_url=args.hub, token=args.token)
    return kc.load_feed(args.feed)


def cmd_append(args: argparse.Namespace) -> None:
    import kachery_core as kc

    feed = _feed(args)
    sizes = MIXED if args.pattern == "mixed" else (1,)
    i = k = 0
    _emit("ready")
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
        _emit("appended", items=items, numbers=numbers, retried=retried)
        i += size
        if args.pause:
            time.sleep(args.pause)
    _emit("done")


def cmd_next(args: argparse.Namespace) -> None:
    feed = _feed(args)
    feed.set_position(args.start)
    _emit("waiting", position=feed.current_message_number)
    t0 = time.monotonic()
    messages = feed.get_next_messages(timeout_sec=args.timeout)
    _emit("got", messages=messages, elapsed=time.monotonic() - t0, position=feed.current_message_number)


def cmd_next_loop(args: argparse.Namespace) -> None:
    feed = _feed(args)
    _emit("ready")
    got = 0
    while got < args.total:
        messages = feed.get_next_messages(timeout_sec=args.timeout)
        if not messages:
            _emit("timed_out", got=got)
            return
        got += len(messages)
        _emit("got", messages=messages)
    _emit("done", position=feed.current_message_number)


def cmd_follow(args: argparse.Namespace) -> None:
    feed = _feed(args)
    _emit("ready")
    got = 0
    kwargs: dict[str, Any] = {}
    if args.reconnect is not None:
        kwargs["reconnect_seconds"] = args.reconnect
    stream = feed.follow(args.start, **kwargs)
    try:
        for m in stream:
            _emit("msg", n=m.number, m=m.message, user=m.user, time=m.time,
                  reconnects=getattr(stream, "reconnects", None))
            got += 1
            if got >= args.total:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    _emit("done")


def cmd_read(args: argparse.Namespace) -> None:
    feed = _feed(args)
    bodies = feed.get_messages()
    count = feed.get_num_messages()
    iterated = [[m.number, m.message] for m in feed.iter_messages()]
    _emit("read", get=bodies, iter=iterated, count=count)


def cmd_probe(args: argparse.Namespace) -> None:
    """Each step's result or error, so one process shows all a client may and may not do."""
    import kachery_core as kc

    if os.environ.get("KACHERY_CLOUD_EPHEMERAL"):
        os.environ["KACHERY_HUB_URL"] = args.hub
    else:
        kc.init(hub_url=args.hub, token=args.token)
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
            _emit("step", name=name, ok=True, value=step())
        except Exception as e:  # the point: report it, go on
            _emit("step", name=name, ok=False, error=_error(e))
            if name == "load":
                break
    _emit("done")


def _first_followed(feed: Any) -> dict[str, Any]:
    stream = feed.follow(0)
    try:
        m = next(iter(stream))
    finally:
        stream.close()
    return {"n": m.number, "m": m.message, "user": m.user}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feed_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--hub", required=True)
    common.add_argument("--token")
    common.add_argument("--feed", required=True)
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
    try:
        command(args)
    except Exception as e:
        _emit("error", error=_error(e))
        return 3
    return 0


# ---- the side that starts workers (imported by the tests) ----

KACHERY_ENV = ("KACHERY_CLOUD_DIR", "KACHERY_CLOUD_PROJECT", "KACHERY_CLOUD_EPHEMERAL", "KACHERY_HUB_URL",
               "KACHERY_HUB_TOKEN")


class Worker:
    """One ``feed_worker.py`` process with its own kachery directory; its JSON lines in ``events``."""

    def __init__(self, root: Path, name: str, command: str, *args: str, ephemeral: bool = False) -> None:
        self.name = name
        home = root / "computers" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in KACHERY_ENV}
        env.update(KACHERY_CLOUD_DIR=str(home / "kachery-cloud"), HOME=str(home), PYTHONUNBUFFERED="1")
        if ephemeral:
            env["KACHERY_CLOUD_EPHEMERAL"] = "1"
        self.stderr_path = home / f"{command}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), command, *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e["event"] == kind]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 120.0,
                 what: str = "") -> None:
        """Until ``predicate(events)`` holds; fails, naming ``what`` and the worker's output, after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or (self.events and self.events[-1]["event"] == "exit"):
                    break
                self._changed.wait(min(left, 1.0))
            if predicate(self.events):
                return
        raise AssertionError(f"worker {self.name}: {what or 'condition'} not reached; "
                             f"last events {self.events[-5:]}; stderr {self.stderr()[-3000:]!r}")

    def wait_event(self, kind: str, timeout: float = 120.0) -> dict[str, Any]:
        self.wait_for(lambda events: any(e["event"] in (kind, "error") for e in events), timeout, kind)
        errors = self.of("error")
        assert not errors or kind == "error", f"worker {self.name} failed: {errors[0]}; stderr {self.stderr()[-3000:]!r}"
        return self.of(kind)[0]

    def finish(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Its events once it exited on its own (killed, and failing, after ``timeout``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker {self.name} did not finish; last events {self.events[-5:]}; "
                                 f"stderr {self.stderr()[-3000:]!r}") from None
        self._close()
        return list(self.events)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def messages(self) -> Iterator[dict[str, Any]]:
        """The ``msg`` events (follow) in the order they came."""
        yield from self.of("msg")


if __name__ == "__main__":
    sys.exit(main())
