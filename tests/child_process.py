"""The plumbing of a client in a process of its own, shared by the process-level tests' workers.

A worker script (``feed_worker.py``, ``task_worker.py``) prints one JSON object a
line, each with an ``event`` key (:func:`emit`), signs in with :func:`sign_in`
and reports a failure as :func:`error_fields`. The test side starts it as a
subclass of :class:`Worker`, which names the script, and collects its lines as
they come.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

#: What a worker does not inherit from the environment that starts it (its own directory, its own hub).
KACHERY_ENV = ("KACHERY_CLOUD_DIR", "KACHERY_CLOUD_PROJECT", "KACHERY_CLOUD_EPHEMERAL", "KACHERY_HUB_URL",
               "KACHERY_HUB_TOKEN")


# ---- the worker's side


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def error_fields(e: BaseException, *attributes: str) -> dict[str, Any]:
    """An error as JSON: its type and bases, status, code, message, the named ``attributes`` and where it came from."""
    return {"type": type(e).__name__, "bases": [c.__name__ for c in type(e).__mro__],
            "status": getattr(e, "status", None), "code": getattr(e, "code", None), "message": str(e),
            **{a: getattr(e, a, None) for a in attributes}, "where": traceback.format_exception(e)[-4:]}


def sign_in(hub: str, token: str | None) -> None:
    """Signs in at ``hub`` with ``token``, or only points at it when ``KACHERY_CLOUD_EPHEMERAL`` is set."""
    import kachery_core as kc

    if os.environ.get("KACHERY_CLOUD_EPHEMERAL"):
        os.environ["KACHERY_HUB_URL"] = hub
    else:
        kc.init(hub_url=hub, token=token)


def parser(prog: str, *required: str) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """A worker's command line: (the parser, its subcommands, the options every subcommand takes as a
    ``parents=`` entry: ``--hub``, ``--token`` and the ``required`` ones, such as ``--feed``)."""
    top = argparse.ArgumentParser(prog=prog)
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--hub", required=True)
    common.add_argument("--token")
    for option in required:
        common.add_argument(option, required=True)
    return top, sub, common


def run_command(command: Callable[[Any], None], args: Any,
                describe: Callable[[BaseException], dict[str, Any]] = error_fields) -> int:
    """``command(args)``; a failure printed as an ``error`` event (``describe``d) and exit status 3."""
    # Ctrl-C (SIGINT) raises KeyboardInterrupt, as in a terminal, even when the process that started this
    # one ignored SIGINT (a child inherits an ignored signal, and Python then installs no handler for it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        command(args)
    except Exception as e:
        emit("error", error=describe(e))
        return 3
    return 0


# ---- the side that starts workers (the tests)


class Worker:
    """One worker process (``SCRIPT COMMAND ARGS``) with its own kachery directory; its JSON lines in ``events``."""

    SCRIPT: ClassVar[Path]

    def __init__(self, root: Path, name: str, command: str, *args: str, ephemeral: bool = False) -> None:
        self.name = name
        home = root / "computers" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in KACHERY_ENV}
        env.update(KACHERY_CLOUD_DIR=str(home / "kachery-cloud"), HOME=str(home), PYTHONUNBUFFERED="1")
        if ephemeral:
            env["KACHERY_CLOUD_EPHEMERAL"] = "1"
        self.stderr_path = home / f"{command}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(self.SCRIPT), command, *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "noise", "line": line}
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
        """The first ``kind`` event; fails if the worker failed (an ``error`` event) first."""
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

    def interrupt(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Ctrl-C (SIGINT), then its events once it exited."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        return self.finish(timeout)

    def kill(self) -> None:
        """SIGKILL (a machine that died), waited for."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
