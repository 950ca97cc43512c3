"""A task backend or a task requester in a process of its own, for the process-level task tests.

Run as ``python task_worker.py COMMAND --hub URL [--token T] --project P ...``: the
process uses its own ``KACHERY_CLOUD_DIR`` (set by whoever starts it), signs in
with the token (or acts anonymously when ``KACHERY_CLOUD_EPHEMERAL`` is set) and
prints one JSON object a line, each with an ``event`` key (:mod:`child_process`).
:class:`Worker` starts one and collects those lines as they come.

Commands:
  backend  serves the handlers below with ``TaskBackend.run()`` (Ctrl-C stops it); prints ``ready``
           once the hub lists it with its handlers, ``stopped`` when ``run()`` returned
  request  ``request_task(...)`` once: ``result`` (numpy arrays described) or ``error``; ``progress``
           events as they come
  submit   ``submit_task(...)``: ``submitted`` (the job id), then, with ``--cancel-when FILE``,
           ``cancel()`` once that file exists, then ``result`` or ``error``
  probe    what this client may do with tasks in a project: each step's value or error

Every handler appends one JSON line per event to the ``runs`` file (``extra_kwargs``), so
a test counts runs across processes; a line names the task, the input's ``x``, the backend's
name and its pid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import child_process
from child_process import emit, error_fields, run_command, sign_in

#: How long a handler waits for a file (a gate the test opens) before it gives up.
GATE_SECONDS = 300.0


def _error(e: BaseException) -> dict[str, Any]:
    return error_fields(e, "remote_type", "remote_message", "remote_traceback", "job_id")


def plain(value: Any) -> Any:
    """``value`` as JSON: numpy arrays as ``{"__ndarray__": {dtype, shape, sha1, values (small ones)}}``."""
    import numpy as np

    if isinstance(value, np.ndarray):
        described: dict[str, Any] = {"dtype": str(value.dtype), "shape": list(value.shape),
                                     "sha1": hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()}
        if value.size <= 100:
            values = value.tolist()
            described["values"] = plain(values) if value.dtype.kind != "c" else \
                [[z.real, z.imag] for z in value.ravel().tolist()]
        return {"__ndarray__": described}
    if isinstance(value, np.generic):
        return {"__npscalar__": [str(value.dtype), value.item()]}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    return value


# ---------------------------------------------------------------- handlers


def _log(runs: str, worker: str, task: str, what: str, **fields: Any) -> None:
    line = json.dumps({"task": task, "what": what, "worker": worker, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(runs, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _wait_for_file(path: str) -> bool:
    import kachery_core as kc

    deadline = time.monotonic() + GATE_SECONDS
    while not os.path.exists(path):
        if time.monotonic() > deadline or kc.task_cancel_requested():
            return False
        time.sleep(0.02)
    return True


def h_count(x: Any, runs: str, worker: str, gate: str | None = None) -> dict[str, Any]:
    """A calculation: logs its start, waits for ``gate`` (when given), returns who ran it."""
    _log(runs, worker, "t.count", "start", x=x)
    if gate is not None:
        _wait_for_file(gate)
    _log(runs, worker, "t.count", "end", x=x)
    return {"x": x, "worker": worker, "pid": os.getpid()}


def h_action(x: Any, runs: str, worker: str) -> None:
    """An action: each run logs one line."""
    _log(runs, worker, "t.action", "start", x=x)


def _deep_failure(x: Any) -> None:
    raise ValueError(f"cannot use x={x!r}: it is not a prime")


def h_fail(x: Any, runs: str, worker: str) -> None:
    _log(runs, worker, "t.fail", "start", x=x)
    _deep_failure(x)


def h_arrays(x: Any, runs: str, worker: str) -> dict[str, Any]:
    import numpy as np

    _log(runs, worker, "t.arrays", "start", x=x)
    return {
        "matrix": np.arange(12, dtype=np.float32).reshape(3, 4) * x,
        "nested": {"ints": np.array([[1, -2], [3, 4]], dtype=np.int64), "list": [np.array([True, False]), "s", None],
                   "deep": {"a": [1, 2.5, {"b": [[], {}]}], "empty": np.zeros((0, 3), dtype=np.uint8)}},
        "u16": np.array([65535, 0, 7], dtype=np.uint16),
        "complex": np.array([1 + 2j, -3.5j], dtype=np.complex128),
        "text": "é ✓ \u0000 end",
        "x": x,
    }


def h_big(n: int, runs: str, worker: str) -> dict[str, Any]:
    """A result well over 1 MiB of JSON: ``n`` float64 values and a long string."""
    import numpy as np

    _log(runs, worker, "t.big", "start", x=n)
    return {"values": np.arange(n, dtype=np.float64) / 3.0, "text": "abc" * n, "n": n}


def h_progress(x: Any, runs: str, worker: str, gate: str) -> dict[str, Any]:
    """Reports progress, waits for ``gate`` (the test opens it once the requester saw the progress)."""
    import kachery_core as kc

    _log(runs, worker, "t.progress", "start", x=x)
    kc.report_task_progress(fraction=0.25, message="a quarter done")
    _wait_for_file(gate)
    kc.report_task_progress(fraction=0.75, message="three quarters")
    return {"x": x}


def h_cancellable(x: Any, runs: str, worker: str) -> str:
    """Runs until it is told it was cancelled (or GATE_SECONDS)."""
    import kachery_core as kc

    _log(runs, worker, "t.cancellable", "start", x=x)
    deadline = time.monotonic() + GATE_SECONDS
    while time.monotonic() < deadline:
        if kc.task_cancel_requested():
            _log(runs, worker, "t.cancellable", "cancel seen", x=x)
            return "stopped early"
        time.sleep(0.02)
    _log(runs, worker, "t.cancellable", "end", x=x)
    return "ran to the end"


def h_stubborn(x: Any, runs: str, worker: str, gate: str) -> dict[str, Any]:
    """Never asks whether it was cancelled: waits for ``gate`` (as most handlers would compute on)."""
    _log(runs, worker, "t.stubborn", "start", x=x)
    deadline = time.monotonic() + GATE_SECONDS
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    _log(runs, worker, "t.stubborn", "end", x=x)
    return {"x": x}


HANDLERS: dict[str, tuple[str, Callable[..., Any]]] = {
    "t.count": ("calculation", h_count),
    "t.action": ("action", h_action),
    "t.fail": ("calculation", h_fail),
    "t.arrays": ("calculation", h_arrays),
    "t.big": ("calculation", h_big),
    "t.progress": ("calculation", h_progress),
    "t.cancellable": ("calculation", h_cancellable),
    "t.stubborn": ("calculation", h_stubborn),
}


# ---------------------------------------------------------------- commands


def _connect(args: argparse.Namespace) -> None:
    sign_in(args.hub, args.token)


def cmd_backend(args: argparse.Namespace) -> None:
    import kachery_core as kc

    _connect(args)
    backend = kc.TaskBackend(project_id=args.project, backend_id=args.backend_id, num_workers=args.num_workers,
                             label=args.name)
    for name, (task_type, function) in HANDLERS.items():
        backend.register_task_handler(task_type=task_type, task_name=name, task_function=function,
                                      extra_kwargs={"runs": args.runs, "worker": args.name})
    if args.claims:
        # Counts the backend's claim requests (a private method: the count is what the test is about).
        claim = backend._claim
        count = [0]

        def counted(*a: Any, **k: Any) -> Any:
            count[0] += 1
            Path(args.claims).write_text(str(count[0]))
            return claim(*a, **k)

        backend._claim = counted  # type: ignore[method-assign]
    backend_id = backend.backend_id
    # SIGTERM stops it as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))

    def announce() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                listed = kc.list_task_backends(project_id=args.project)
            except Exception as e:  # the backend's own failure is reported by run()
                emit("list_failed", error=_error(e))
                return
            for b in listed:
                if b.get("backend_id") == backend_id and len(b.get("handlers") or []) == len(HANDLERS):
                    emit("ready", backend_id=backend_id, pid=os.getpid(), listed=b)
                    return
            time.sleep(0.05)

    threading.Thread(target=announce, daemon=True).start()
    backend.run()
    emit("stopped", backend_id=backend_id)


def _progress_callback() -> Callable[..., None]:
    def on_progress(*args: Any, **kwargs: Any) -> None:
        emit("progress", args=plain(list(args)), kwargs=plain(kwargs))
    return on_progress


def cmd_request(args: argparse.Namespace) -> None:
    import kachery_core as kc

    _connect(args)
    emit("requesting")
    t0 = time.monotonic()
    kwargs: dict[str, Any] = {}
    if args.progress:
        kwargs["progress"] = _progress_callback()
    try:
        result = kc.request_task(task_type=args.type, task_name=args.name, task_input=json.loads(args.input),
                                 timeout_sec=args.timeout, project_id=args.project, **kwargs)
    except Exception as e:
        emit("failed", error=_error(e), elapsed=time.monotonic() - t0)
        return
    emit("result", value=plain(result), type=type(result).__name__, elapsed=time.monotonic() - t0)


def cmd_submit(args: argparse.Namespace) -> None:
    import kachery_core as kc

    _connect(args)
    handle = kc.submit_task(task_type=args.type, task_name=args.name, task_input=json.loads(args.input),
                            project_id=args.project)
    emit("submitted", job_id=handle.job_id, status=handle.status)
    if args.cancel_when:
        deadline = time.monotonic() + GATE_SECONDS
        while not os.path.exists(args.cancel_when) and time.monotonic() < deadline:
            time.sleep(0.02)
        handle.cancel()
        emit("cancel_called", status=handle.status)
    try:
        result = handle.result(timeout=args.timeout)
    except Exception as e:
        emit("failed", error=_error(e), status=handle.status)
        return
    emit("result", value=plain(result), status=handle.status)


def cmd_probe(args: argparse.Namespace) -> None:
    """Each step's result or error, so one process shows all a client may and may not do with tasks."""
    import kachery_core as kc

    _connect(args)
    p = args.project

    def request(task_type: str, task_name: str, task_input: str) -> Any:
        return plain(kc.request_task(task_type=task_type, task_name=task_name, task_input=json.loads(task_input),
                                     timeout_sec=args.timeout, project_id=p))

    steps: dict[str, Callable[[str], Any]] = {
        "calculation": lambda arg: request("calculation", "t.count", arg),
        "action": lambda arg: request("action", "t.action", arg),
        "list_jobs": lambda arg: kc.list_task_jobs(project_id=p),
        "list_backends": lambda arg: kc.list_task_backends(project_id=p),
        "register": lambda arg: _register_only(p),
    }
    # A step is NAME or NAME=ARGUMENT (a task input as JSON).
    for step in args.steps:
        name, _, arg = step.partition("=")
        try:
            emit("step", name=step, ok=True, value=steps[name](arg))
        except Exception as e:  # the point: report it, go on
            emit("step", name=step, ok=False, error=_error(e))
    emit("done")


def _register_only(project: str) -> str:
    """A backend serving one handler, started (the registration) and stopped: its id, or the refusal."""
    import kachery_core as kc

    backend = kc.TaskBackend(project_id=project, num_workers=1)
    backend.register_task_handler(task_type="calculation", task_name="t.count", task_function=h_count,
                                  extra_kwargs={"runs": os.devnull, "worker": "probe"})
    backend.start()  # a refused registration is raised here
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(b.get("backend_id") == backend.backend_id for b in kc.list_task_backends(project_id=project)):
                return str(backend.backend_id)
            time.sleep(0.05)
        raise AssertionError("start() returned but the hub never listed the backend")
    finally:
        backend.stop(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser, sub, common = child_process.parser("task_worker", "--project")
    p = sub.add_parser("backend", parents=[common])
    p.add_argument("--runs", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--backend-id")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--claims", help="a file that holds how many claim requests the backend sent")
    for name in ("request", "submit"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--type", default="calculation")
        p.add_argument("--name", required=True)
        p.add_argument("--input", required=True)
        p.add_argument("--timeout", type=float, default=120.0)
        if name == "request":
            p.add_argument("--progress", action="store_true")
        else:
            p.add_argument("--cancel-when")
    p = sub.add_parser("probe", parents=[common])
    p.add_argument("steps", nargs="+")
    p.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    command = {"backend": cmd_backend, "request": cmd_request, "submit": cmd_submit, "probe": cmd_probe}[args.command]
    return run_command(command, args, _error)


# ---- the side that starts workers (imported by the tests)


class Worker(child_process.Worker):
    """One ``task_worker.py`` process with its own kachery directory; its JSON lines in ``events``."""

    SCRIPT = Path(__file__).resolve()

    def outcome(self, timeout: float = 180.0) -> dict[str, Any]:
        """The ``result`` or ``failed`` event of a requester."""
        self.wait_for(lambda events: any(e["event"] in ("result", "failed", "error") for e in events), timeout,
                      "an outcome")
        for e in self.events:
            if e["event"] in ("result", "failed"):
                return e
        raise AssertionError(f"worker {self.name} failed: {self.of('error')[0]}; stderr {self.stderr()[-3000:]!r}")

    def result(self, timeout: float = 180.0) -> Any:
        """The value a requester got (failing with its error if it got none)."""
        e = self.outcome(timeout)
        assert e["event"] == "result", f"worker {self.name}: {e}; stderr {self.stderr()[-3000:]!r}"
        return e["value"]


def runs(path: Path) -> list[dict[str, Any]]:
    """The lines handlers logged to ``path`` (none if no handler ran)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
