"""The task panel: a project's task handlers online and its recent jobs, kept up to date.

How it stays live: while a front end is attached (from its first ``ready`` message
until the widget or its comm closes), a kernel thread asks the hub for the
project's backends and recent jobs (:func:`kachery_core.list_task_backends`,
:func:`kachery_core.list_task_jobs`) every ``interval`` seconds (1 s) and sends a
snapshot only when something changed. Polling rather than following each job's
event stream: the panel watches every job of the project, including jobs created
after it opened, and two small requests a second cost the hub less than one open
stream per job. Nothing is asked while no front end is attached.

    kernel → front end  {"type": "snapshot", "now": t, "backends": [...], "jobs": [...]}
    front end → kernel  {"type": "ready"}      send the latest snapshot (and start watching)
                        {"type": "refresh"}    look at the hub now

Every view draws only the job rows in view (``js/taskpanel.js``); the text/plain
copy of the widget lists the same, for where widgets do not render.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import anywidget
import traitlets

import kachery_core as kc

from ._assets import module, stylesheet
from ._taskmagic import kernel_tasks

_TEXT_JOBS = 20  # jobs listed in the text/plain copy


def _epoch(value: Any) -> float | None:
    """A time from the hub (epoch seconds or ISO 8601) as epoch seconds; None when absent."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _text(value: Any, limit: int = 100_000) -> str:
    return "" if value is None else str(value)[:limit]


def backend_row(record: Mapping[str, Any], local_ids: set[str]) -> dict[str, Any]:
    """What the panel shows of a backend record."""
    handlers = []
    for h in record.get("handlers") or []:
        if isinstance(h, Mapping):
            handlers.append([_text(h.get("task_type")), _text(h.get("task_name"))])
    backend_id = _text(record.get("backend_id"))
    return {
        "backend_id": backend_id,
        "label": _text(record.get("label"), 200),
        "user": _text(record.get("user") or record.get("user_email") or record.get("registered_by"), 320),
        "handlers": sorted(handlers, key=lambda h: (h[1], h[0])),
        "last_heartbeat": _epoch(record.get("last_heartbeat") or record.get("last_seen")),
        "num_workers": record.get("num_workers") if isinstance(record.get("num_workers"), int) else None,
        "this_kernel": backend_id in local_ids,
    }


def job_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the panel shows of a job record (the result itself stays on the hub)."""
    progress = record.get("progress") if isinstance(record.get("progress"), Mapping) else {}
    fraction = progress.get("fraction") if progress else None
    error = record.get("error") if isinstance(record.get("error"), Mapping) else None
    return {
        "job_id": _text(record.get("job_id"), 200),
        "task_type": _text(record.get("task_type"), 40),
        "task_name": _text(record.get("task_name"), 200),
        "status": _text(record.get("status"), 40),
        "attempts": record.get("attempts") if isinstance(record.get("attempts"), int) else 0,
        "requested_by": _text(record.get("requested_by"), 320),
        "requested_at": _epoch(record.get("requested_at")),
        "started_at": _epoch(record.get("started_at")),
        "finished_at": _epoch(record.get("finished_at")),
        "backend_id": _text(record.get("backend_id"), 200),
        "fraction": float(fraction) if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else None,
        "message": _text(progress.get("message"), 500) if progress else "",
        "error": None if error is None else {
            "type": _text(error.get("type"), 200),
            "message": _text(error.get("message"), 10_000),
            "traceback": _text(error.get("traceback")),
        },
        "cancel_requested": bool(record.get("cancel_requested")),
    }


def _error_text(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _duration(job: Mapping[str, Any], now: float) -> str:
    start = job.get("started_at")
    if start is None:
        return ""
    end = job.get("finished_at") or now
    seconds = max(0.0, float(end) - float(start))
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


class _Watch:
    """One watching thread: looks at the hub every ``interval`` seconds until stopped."""

    def __init__(self, panel: TaskPanel) -> None:
        self.panel = panel
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kachery-task-panel", daemon=True)

    def _run(self) -> None:
        panel = self.panel
        while not self.stop.is_set():
            try:
                panel.look()
            except Exception as e:  # a hub away for a while: said, and asked again next time
                if not self.stop.is_set():
                    panel._show("error", _error_text(e))
            self.wake.wait(panel.interval)
            self.wake.clear()


class TaskPanel(anywidget.AnyWidget):
    """The tasks of a project: ``TaskPanel()`` (the current project) or ``TaskPanel("project-id")``."""

    _esm = module("taskpanel.js")
    _css = stylesheet("taskpanel.css")

    project_id = traitlets.Unicode("").tag(sync=True)
    #: ``waiting`` (for a front end), ``live``, ``error`` (with ``status_message``), ``closed``
    status = traitlets.Unicode("waiting").tag(sync=True)
    status_message = traitlets.Unicode("").tag(sync=True)

    #: seconds between two looks at the hub while a front end is attached
    interval = traitlets.Float(1.0)
    #: most recent jobs listed
    limit = traitlets.Int(100)

    def __init__(self, project_id: str | None = None, *, limit: int = 100, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._watch: _Watch | None = None
        self._last_watch: _Watch | None = None
        self._closed = False
        self._sent = ""  # the last snapshot sent (JSON without its time): unchanged ones are not sent again
        self.snapshot: dict[str, Any] = {"now": time.time(), "backends": [], "jobs": []}
        super().__init__(**kwargs)
        try:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise kc.InvalidArgumentError("limit", limit, "expected a number of jobs (an int >= 1)")
            self.limit = limit
            self.project_id = kc.get_project_id(project_id)
            self.look(send=False)  # the first look raises: no hub, no such project, not a member
        except BaseException:
            self.close()
            raise
        self.on_msg(self._on_msg)
        if self.comm is not None:
            # The front end closing the comm (the output cleared, the page gone for good) stops watching.
            self.comm.on_close(lambda _msg: self._stop_watching(closed=True))

    # -- looking at the hub ------------------------------------------------------

    def look(self, *, send: bool = True, force: bool = False) -> dict[str, Any]:
        """Ask the hub once; send the snapshot to the front end when it changed (or ``force``)."""
        listed = kc.list_task_backends(project_id=self.project_id)
        # After the hub answered: a backend it lists has been started, so this kernel knows it by now.
        local = {b.backend_id for b in kernel_tasks.backends().values()}
        backends = [backend_row(b, local) for b in listed]
        jobs = [job_row(j) for j in kc.list_task_jobs(project_id=self.project_id, limit=self.limit)]
        snapshot = {"now": time.time(), "backends": backends, "jobs": jobs}
        self.snapshot = snapshot
        if self.status == "error":
            self._show("live" if self._watch is not None else "waiting")
        if send:
            self._send_snapshot(force=force)
        return snapshot

    def _send_snapshot(self, *, force: bool = False) -> None:
        snapshot = self.snapshot
        key = json.dumps([snapshot["backends"], snapshot["jobs"]], sort_keys=True)
        if key == self._sent and not force:
            return
        self._sent = key
        self.send({"type": "snapshot", **snapshot})

    def watch(self) -> None:
        """Start watching the hub (a front end is attached); again: send the latest snapshot."""
        with self._lock:
            if self._closed:
                return
            if self._watch is None:
                self._watch = self._last_watch = _Watch(self)
                self._show("live")
                self._watch.thread.start()
            else:
                self._watch.wake.set()
        self._send_snapshot(force=True)

    def _stop_watching(self, *, closed: bool = False) -> None:
        with self._lock:
            self._closed = self._closed or closed
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop.set()
            watch.wake.set()

    @property
    def watching(self) -> bool:
        """Whether a thread watches the hub for this panel."""
        watch = self._watch
        return watch is not None and watch.thread.is_alive()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the watching thread ended (after :meth:`close`); returns whether it did."""
        watch = self._last_watch
        if watch is None or not watch.thread.is_alive():
            return True
        watch.thread.join(timeout)
        return not watch.thread.is_alive()

    def close(self) -> None:
        """Stop watching and close the widget (its views disappear)."""
        self._stop_watching(closed=True)
        self._show("closed")
        super().close()

    def _show(self, status: str, message: str = "") -> None:
        with self.hold_sync():
            self.status_message = message
            self.status = status

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "ready":
            self.watch()
        elif content.get("type") == "refresh" and self._watch is not None:
            self._watch.wake.set()

    # -- text, for where widgets do not render -------------------------------------

    def text(self) -> str:
        """The last snapshot as lines of text."""
        snapshot = self.snapshot
        now = float(snapshot["now"])
        backends, jobs = snapshot["backends"], snapshot["jobs"]
        handlers = sum(len(b["handlers"]) for b in backends)
        lines = [f"kachery tasks of project {self.project_id}: {len(backends)} backend{'' if len(backends) == 1 else 's'} "
                 f"online ({handlers} handler{'' if handlers == 1 else 's'}), {len(jobs)} recent job{'' if len(jobs) == 1 else 's'}"]
        for b in backends:
            beat = f", heartbeat {max(0.0, now - b['last_heartbeat']):.0f} s ago" if b["last_heartbeat"] else ""
            who = f" {b['label']}" if b["label"] else ""
            names = ", ".join(f"{t} {n}" for t, n in b["handlers"]) or "no handlers"
            lines.append(f"  backend {b['backend_id']}{who}{beat}: {names}")
        for j in jobs[:_TEXT_JOBS]:
            took = _duration(j, now)
            error = j["error"]
            lines.append(" ".join(x for x in (
                f"  {j['status']:<9} {j['task_type']} {j['task_name']}", took,
                f"by {j['requested_by']}" if j["requested_by"] else "",
                f"({error['type']}: {error['message'].splitlines()[0] if error['message'] else ''})" if error else "",
            ) if x))
        if len(jobs) > _TEXT_JOBS:
            lines.append(f"  … and {len(jobs) - _TEXT_JOBS} more")
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        shown = super()._repr_mimebundle_(**kwargs)
        data, metadata = shown if shown is not None else ({}, {})
        return {**data, "text/plain": self.text()}, dict(metadata)
