"""Tasks served by the notebook kernel (``%%kc_task``) and requests that show their progress.

``%%kc_task NAME`` runs its cell in the notebook's namespace, takes the function
``NAME`` from it and registers it with the kernel's task backend for the project.
The kernel runs one :class:`kachery_core.TaskBackend` per project, kept by a
:class:`KernelTasks` (one per kernel, :data:`kernel_tasks`): the first ``%%kc_task``
of a project starts it (its threads claim and run jobs in the background, so the
kernel stays usable); later ones add or replace handlers on the same backend; at
exit the backends stop, telling the hub they are gone.

:func:`task_progress` is a ``progress=`` callback for :func:`kachery_core.request_task`
and :func:`kachery_core.submit_task`: one status line per job, updated in place
(HTML in a notebook, with a text/plain copy where HTML does not render).
"""

from __future__ import annotations

import atexit
import html
import inspect
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kachery_core as kc
from kachery_core import _tasks

TASK_TYPES = ("calculation", "action")

# A bad task name is refused before the cell runs, with the core's error.
check_task_name = _tasks.check_task_name


def _label() -> str:
    """What the task panel shows for this kernel's backends."""
    return f"notebook kernel {socket.gethostname()} pid {os.getpid()}"


class KernelTasks:
    """The task backends of this kernel, one per project."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, kc.TaskBackend] = {}
        self._exit_hook = False

    def serve(self, *, task_name: str, task_function: Callable[..., Any], task_type: str = "calculation",
              project_id: str | None = None) -> tuple[kc.TaskBackend, str, bool]:
        """Serve ``task_function`` as ``task_name`` for the project; returns the backend, the
        project ID and whether the name replaced a handler this kernel already served. Raises the core's typed errors
        (a bad name, no hub, no write access); nothing is left running then."""
        if task_type not in TASK_TYPES:
            raise kc.InvalidArgumentError("task_type", task_type, "expected 'calculation' or 'action'")
        project = kc.get_project_id(project_id)
        with self._lock:
            backend = self._backends.get(project)
            if backend is not None:
                replaced = task_name in backend.handlers
                backend.register_task_handler(task_type=task_type, task_name=task_name, task_function=task_function)
                return backend, project, replaced
            backend = kc.TaskBackend(project_id=project, label=_label())
            backend.register_task_handler(task_type=task_type, task_name=task_name, task_function=task_function)
            backend.start()  # announces the handlers first: a refusal is raised here, not in a thread
            self._backends[project] = backend
            if not self._exit_hook:
                atexit.register(self.stop)
                self._exit_hook = True
            return backend, project, False

    def backends(self) -> dict[str, kc.TaskBackend]:
        """Project ID → the backend this kernel runs for it."""
        with self._lock:
            return dict(self._backends)

    def stop(self, project_id: str | None = None, timeout: float = 5.0) -> int:
        """Stop serving (one project's backend, or all); returns how many backends stopped."""
        with self._lock:
            if project_id is None:
                stopping, self._backends = list(self._backends.values()), {}
            else:
                one = self._backends.pop(project_id, None)
                stopping = [one] if one is not None else []
        for backend in stopping:
            backend.stop(timeout=timeout)
        return len(stopping)


#: this kernel's task backends
kernel_tasks = KernelTasks()


def stop_serving_tasks(project_id: str | None = None) -> int:
    """Stop the task backends ``%%kc_task`` started in this kernel (for one project, or all);
    returns how many stopped. Requests already queued wait for another backend."""
    return kernel_tasks.stop(project_id)


class CellRaised(Exception):
    """The cell of ``%%kc_task`` raised (its traceback is already shown)."""


def run_cell_for(shell: Any, cell: str, function_name: str) -> Callable[..., Any]:
    """Run ``cell`` in the notebook's namespace, as if it were a cell of its own; return the
    function it (re)defined as ``function_name``. Raises :class:`CellRaised` after showing the
    cell's traceback, or ``LookupError`` when the cell did not define that function."""
    source = shell.transform_cell(cell)  # %magics and !commands inside the cell work as usual
    # A file name IPython keeps the source of: tracebacks of the handler (shown to the requester) show its lines.
    filename = shell.compile.cache(source, shell.execution_count)
    before = shell.user_ns.get(function_name)
    try:
        exec(shell.compile(source, filename, "exec"), shell.user_global_ns, shell.user_ns)
    except Exception as e:
        shell.showtraceback(tb_offset=1)  # the cell's frames only, not this function's
        raise CellRaised(f"{type(e).__name__}") from None
    function = shell.user_ns.get(function_name)
    if function is None or function is before or not callable(function):
        raise LookupError(function_name)
    return function  # type: ignore[no-any-return]


def describe_handler(task_type: str, task_name: str, function: Callable[..., Any]) -> str:
    """``calculation mean_rate(x, scale=1.0)``: what a handler takes, for the line ``%%kc_task`` prints."""
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):  # some builtins have none
        signature = "(...)"
    return f"{task_type} {task_name}{signature}"


# ---------------------------------------------------------------- progress of a request


_TERMINAL = ("finished", "error", "cancelled")


def progress_text(job: Mapping[str, Any]) -> str:
    """One line for a job record: ``mean_rate: started 40% reading chunk 4 (attempt 2)``."""
    name = str(job.get("task_name") or "task")
    status = str(job.get("status") or "pending")
    parts = [f"{name}: {'waiting for a backend' if status == 'pending' else status}"]
    progress = job.get("progress") if isinstance(job.get("progress"), Mapping) else {}
    fraction = progress.get("fraction") if progress else None
    if status == "started" and isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
        parts.append(f"{max(0.0, min(1.0, float(fraction))):.0%}")
    if status == "started" and progress and progress.get("message"):
        parts.append(str(progress["message"]).splitlines()[0][:200])
    error = job.get("error")
    if status == "error" and isinstance(error, Mapping):
        parts.append(f"{error.get('type') or 'Error'}: {str(error.get('message') or '').splitlines()[0] if error.get('message') else ''}".rstrip(": "))
    attempts = job.get("attempts")
    if isinstance(attempts, int) and attempts > 1 and status not in ("finished",):
        parts.append(f"(attempt {attempts})")
    return " ".join(parts)


def progress_html(job: Mapping[str, Any]) -> str:
    """The line as HTML: a progress bar while started, every value escaped."""
    status = str(job.get("status") or "pending")
    progress = job.get("progress") if isinstance(job.get("progress"), Mapping) else {}
    fraction = progress.get("fraction") if progress else None
    bar = ""
    if status == "started":
        value = f' value="{max(0.0, min(1.0, float(fraction))):.4f}"' if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else ""
        bar = f'<progress max="1"{value} style="width:10em;vertical-align:middle;margin-right:.5em"></progress>'
    return f'<div class="kc-task-progress" data-status="{html.escape(status)}">{bar}<code>{html.escape(progress_text(job))}</code></div>'


class _ProgressLines:
    """A display per job, updated in place; dropped once the job ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._last: dict[str, str] = {}

    def __call__(self, job: Mapping[str, Any]) -> None:
        from IPython import get_ipython
        from IPython.display import display

        job_id = str(job.get("job_id") or "")
        text = progress_text(job)
        bundle = {"text/plain": text, "text/html": progress_html(job)}
        done = str(job.get("status")) in _TERMINAL
        with self._lock:
            if self._last.get(job_id) == text and not done:
                return  # the same line again (a heartbeat): nothing to redraw
            self._last[job_id] = text
            handle = self._handles.get(job_id)
            if done:
                self._handles.pop(job_id, None)
                self._last.pop(job_id, None)
        if get_ipython() is None:  # a plain script: one printed line per change
            print(text, flush=True)
            return
        if handle is None:
            handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]
            if not done:
                with self._lock:
                    self._handles[job_id] = handle
        else:
            handle.update(bundle, raw=True)


_lines = _ProgressLines()


def task_progress(job: Mapping[str, Any]) -> None:
    """Show a request's status and progress while it waits, as a line updated in place::

        kc.request_task(task_type="calculation", task_name="mean_rate", task_input={"x": 3},
                        progress=kachery_jupyter.task_progress)

    Called with the job record each time it changes (status, ``progress``, ``error``).
    """
    _lines(job)
