"""Tasks: a backend serves named functions for a project; anyone who may, requests them.

kachery-cloud's API (``TaskBackend``, ``register_task_handler``, ``run``, ``request_task``) on a
hub that keeps jobs in its database, so nothing is lost:

- ``request_task`` waits for a backend (the job is queued), up to ``timeout_sec``; then
  :class:`TaskTimeoutError` names the task and whether any backend took it.
- A ``calculation`` is cached by its job id, ``sha1_of_dict({"taskInput": ..., "taskName": ...})``:
  a second request, from anyone, is answered at once even with no backend online; a request of a
  running one joins it. An ``action`` runs every time.
- A handler's exception reaches the requester as :class:`TaskError` with the remote type, message
  and traceback. Statuses and progress are pushed by the hub (an event stream), not polled.
- A backend holds each job under a lease it renews while working; if it dies, the job runs again on
  another backend (3 attempts in all).

Handlers are called as ``task_function(**task_input, **extra_kwargs)``. Inside one,
:func:`report_task_progress` and :func:`task_cancel_requested` speak for the running job.
Results are JSON values and numpy arrays (encoded as kachery-cloud encodes them); a result over
1 MiB of JSON is stored as a file in the project and loaded (verified) by the requester.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from . import _constants, _hub
from ._feeds import _sse, require_event_stream
from ._hashing import sha1_of_dict
from ._projects import get_project_id
from ._serializers import canonical_json, find_json_problem
from .errors import (
    HubAuthError,
    HubError,
    HubNotFoundError,
    HubServerError,
    HubUnavailableError,
    InvalidArgumentError,
    InvalidTaskNameError,
    TaskCancelledError,
    TaskError,
    TaskInputError,
    TaskTimeoutError,
)

if TYPE_CHECKING:
    import httpx2

log = logging.getLogger("kachery_core.tasks")

TASK_TYPES = ("calculation", "action")
TERMINAL = ("finished", "error", "cancelled")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


# ---------------------------------------------------------------- names, inputs, results


def check_task_name(task_name: object) -> str:
    if not isinstance(task_name, str) or not 1 <= len(task_name) <= 200 or not set(task_name) <= _NAME_CHARS:
        raise InvalidTaskNameError(task_name)
    return task_name


def check_task_type(task_type: object) -> str:
    if task_type not in TASK_TYPES:
        raise InvalidArgumentError("task_type", task_type, "expected 'calculation' or 'action'")
    return str(task_type)


def encode_input(task_input: object) -> str:
    """The canonical JSON of a task input (a dict of JSON values), or a typed error naming what is wrong."""
    if not isinstance(task_input, dict):
        raise TaskInputError("task_input", f"a task input must be a dict (a JSON object), not {type(task_input).__name__}")
    try:
        encoded = canonical_json(task_input)
    except (TypeError, ValueError, RecursionError) as e:
        found = find_json_problem(task_input, "task_input")
        raise TaskInputError(*(found or ("task_input", str(e)))) from None
    if len(encoded) > _constants.MAX_TASK_INPUT_BYTES:
        raise TaskInputError("task_input", f"{len(encoded)} bytes of JSON, over the limit of "
                                           f"{_constants.MAX_TASK_INPUT_BYTES} bytes")
    return encoded


def task_job_id(task_name: str, task_input: dict[str, Any]) -> str:
    """The job id of a calculation, as kachery-cloud computes it (so the cache is shared by name and input)."""
    check_task_name(task_name)
    encode_input(task_input)
    return sha1_of_dict({"taskInput": task_input, "taskName": task_name})


def encode_result(value: Any, path: str = "result") -> Any:
    """A result as JSON: numpy arrays as kachery-cloud writes them ({"_type": "ndarray", ...}), numpy scalars as numbers."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: encode_result(v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_result(v, f"{path}[{i}]") for i, v in enumerate(value)]
    module = type(value).__module__
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TaskInputError(path, "a numpy array of Python objects cannot be sent")
            data = np.ascontiguousarray(value)
            return {"_type": "ndarray", "shape": list(value.shape), "dtype": str(value.dtype),
                    "data_b64": base64.b64encode(data.tobytes()).decode("ascii")}
        if isinstance(value, np.generic):
            return value.item()
    raise TaskInputError(path, f"a {module}.{type(value).__qualname__} cannot be sent as a task result")


def decode_result(value: Any) -> Any:
    """The inverse of :func:`encode_result` (numpy arrays rebuilt, read-only)."""
    if isinstance(value, list):
        return [decode_result(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("_type") == "ndarray" and ("data_b64" in value or "data_gzip_b64" in value):
        import numpy as np

        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            raise TaskError("a result held a numpy array of Python objects, which is refused", remote_type="")
        raw = base64.b64decode(value["data_b64"] if "data_b64" in value else value["data_gzip_b64"])
        if "data_gzip_b64" in value:
            import zlib

            raw = zlib.decompress(raw)
        return np.frombuffer(raw, dtype=dtype).reshape([int(n) for n in value["shape"]])
    return {k: decode_result(v) for k, v in value.items()}


# ---------------------------------------------------------------- inside a running handler


@dataclass
class _JobContext:
    job_id: str
    task_name: str
    cancel: threading.Event = field(default_factory=threading.Event)
    report: Callable[[float | None, str | None], None] | None = None


_local = threading.local()


def report_task_progress(fraction: float | None = None, message: str | None = None) -> None:
    """From inside a handler: how far the running job is (0..1) and/or what it is doing. A no-op elsewhere."""
    ctx: _JobContext | None = getattr(_local, "job", None)
    if ctx is not None and ctx.report is not None:
        if fraction is not None and not 0 <= float(fraction) <= 1:
            raise InvalidArgumentError("fraction", fraction, "expected a number from 0 to 1")
        ctx.report(None if fraction is None else float(fraction), None if message is None else str(message)[:1000])


def task_cancel_requested() -> bool:
    """From inside a handler: whether the job was cancelled (the handler may stop early). False elsewhere."""
    ctx: _JobContext | None = getattr(_local, "job", None)
    return ctx is not None and ctx.cancel.is_set()


def _run_handler(function: Callable[..., Any], kwargs: dict[str, Any], ctx: _JobContext | None) -> tuple[str, Any]:
    """Run a handler; ("finished", encoded result) or ("error", {type, message, traceback}) or ("cancelled", None)."""
    if ctx is not None:
        _local.job = ctx
    try:
        value = function(**kwargs)
        if ctx is not None and ctx.cancel.is_set():
            return "cancelled", None
        return "finished", encode_result(value)
    except TaskCancelledError:
        return "cancelled", None
    except BaseException as e:  # noqa: BLE001 - every failure of a handler is the requester's to see
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        # The traceback from the handler's own frame on (this function's frame says nothing to the requester).
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        return "error", {"type": f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins."),
                         "message": str(e), "traceback": "".join(traceback.format_exception(type(e), e, tb))}
    finally:
        if ctx is not None:
            _local.job = None


# ---------------------------------------------------------------- requesting


def _tasks_path(project_id: str) -> str:
    return f"/api/projects/{quote(project_id, safe='')}/tasks"


class TaskHandle:
    """A requested job: its status, progress, result; made by :func:`submit_task`."""

    def __init__(self, client: _hub.HubClient, project_id: str, record: dict[str, Any]) -> None:
        self._client = client
        self.project_id = project_id
        self.job_id: str = record["job_id"]
        self.task_name: str = record["task_name"]
        self.task_type: str = record["task_type"]
        self._record = record

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_type} {self.task_name!r} job {self.job_id[:12]}… {self._record['status']}>"

    @property
    def _path(self) -> str:
        return f"{_tasks_path(self.project_id)}/jobs/{self.job_id}"

    def info(self, refresh: bool = True) -> dict[str, Any]:
        """The hub's record of the job: status, attempts, progress, error, times, result when finished."""
        if refresh:
            self._record = self._client.json("GET", self._path, session=True)
        return self._record

    @property
    def status(self) -> str:
        """pending, started, finished, error or cancelled (asked of the hub)."""
        return str(self.info()["status"])

    @property
    def progress(self) -> dict[str, Any] | None:
        progress: dict[str, Any] | None = self._record.get("progress")
        return progress

    def cancel(self) -> str:
        """Ask for the job to stop: a pending one is cancelled at once, a running one when its backend hears."""
        self._record = self._client.json("POST", self._path + "/cancel")
        return str(self._record["status"])

    def wait(self, timeout: float | None = None, on_update: Callable[[dict[str, Any]], None] | None = None,
             ) -> dict[str, Any]:
        """The job's record once it ended, or as it is after ``timeout`` seconds; ``on_update`` sees each change."""
        import httpx2

        if self._record["status"] in TERMINAL:
            return self._record
        deadline = None if timeout is None else time.monotonic() + timeout
        if on_update is None:
            return self._wait_end(deadline)
        seen = self._record.get("version")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self._record
            wait = 3600.0 if left is None else min(left, 3600.0)
            try:
                response = self._client.send(
                    "GET", self._path + "/events", params={"wait": round(max(wait, 0.001), 3)}, stream=True,
                    timeout=httpx2.Timeout(connect=10.0, read=min(wait, 60.0) + 30.0, write=30.0, pool=30.0))
                require_event_stream(self._client.url, response)
            except (HubUnavailableError, HubServerError):
                time.sleep(0.2)
                continue
            try:
                for name, data, _ in _sse(response):
                    if name == "job":
                        record: dict[str, Any] = json.loads(data)
                        self._record = record
                        if record.get("version") != seen:
                            seen = record.get("version")
                            if on_update is not None:
                                on_update(record)
                        if record["status"] in TERMINAL:
                            return record
                    elif name == "end":
                        reason = json.loads(data)
                        if reason.get("reason") == "refused":
                            raise HubError(self._client.url, reason.get("message", "access refused"),
                                           code=reason.get("code"))
                        break
            except (httpx2.TransportError, httpx2.StreamError):
                time.sleep(0.1)  # dropped: ask again (the stream starts with the record as it is)
            finally:
                response.close()

    def _wait_end(self, deadline: float | None) -> dict[str, Any]:
        """Long-polls of the job (on the session with the hub when it has one) until it ends or ``deadline``."""
        import httpx2

        while self._record["status"] not in TERMINAL:
            left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
            if left <= 0:
                break
            try:
                self._record = self._client.json(
                    "GET", self._path, params={"wait": round(max(left, 0.001), 3)}, session=True,
                    timeout=httpx2.Timeout(connect=10.0, read=left + 30.0, write=30.0, pool=30.0))
            except (HubUnavailableError, HubServerError):
                time.sleep(0.2)  # the hub restarts, or a session broke: ask again
        return self._record

    def result(self, timeout: float | None = None) -> Any:
        """The result (None for an action), waiting up to ``timeout`` s; raises TaskError, TaskCancelledError, TaskTimeoutError."""
        record = self.wait(timeout)
        return _outcome(self, record, timeout)


def _outcome(handle: TaskHandle, record: dict[str, Any], timeout: float | None) -> Any:
    status = record["status"]
    if status == "finished":
        if record.get("result_uri"):
            from ._store import load_json

            return decode_result(load_json(record["result_uri"]))
        if "result" not in record:
            record = handle.info()
        return decode_result(record.get("result"))
    if status == "error":
        err = record.get("error") or {}
        raise TaskError(
            f"task {handle.task_name!r} failed: {err.get('type', 'Exception')}: {err.get('message', '')}",
            remote_type=str(err.get("type") or ""), remote_message=str(err.get("message") or ""),
            remote_traceback=err.get("traceback"), job_id=handle.job_id, task_name=handle.task_name)
    if status == "cancelled":
        raise TaskCancelledError(f"task {handle.task_name!r} (job {handle.job_id}) was cancelled")
    taken = status == "started"
    raise TaskTimeoutError(
        f"task {handle.task_name!r} ({handle.task_type}) did not finish within {timeout:g} s: "
        + ("a backend is running it" if taken else "no backend took it (is a backend serving this task "
                                                   f"for project {handle.project_id}?)"),
        task_name=handle.task_name, job_id=handle.job_id, taken=taken)


def submit_task(*, task_type: str, task_name: str, task_input: dict[str, Any], project_id: str | None = None,
                _wait: float = 0) -> TaskHandle:
    """Request a task without waiting: a :class:`TaskHandle` (a cached calculation is finished already)."""
    check_task_type(task_type)
    check_task_name(task_name)
    encoded = encode_input(task_input)
    client = _hub.connect_for("requesting a task", write=task_type == "action")
    pid = get_project_id(project_id)
    if client.ephemeral:
        # No key, no body: an ephemeral client reads what the project's cache holds (public projects).
        job_id = sha1_of_dict({"taskInput": task_input, "taskName": task_name})
        try:
            return TaskHandle(client, pid, client.json("GET", f"{_tasks_path(pid)}/jobs/{job_id}"))
        except HubNotFoundError as e:
            if e.code != "job_not_found":
                raise
            raise HubAuthError(client.url, f"calculation {task_name!r} with this input has not run in project {pid} "
                                           "yet, and an ephemeral client (KACHERY_CLOUD_EPHEMERAL) only reads cached "
                                           "results; requesting a new one needs this computer's key (unset "
                                           "KACHERY_CLOUD_EPHEMERAL)", status=e.status, code="ephemeral_read_only") from None
    body = ('{"task_input":' + encoded + ',"task_name":' + json.dumps(task_name) + ',"task_type":"'
            + task_type + '"}').encode()
    import httpx2

    # `_wait`: the hub answers once the job ended (or after that long): one round trip for a quick task.
    record = client.json("POST", _tasks_path(pid) + "/requests", content=body, params={"wait": _wait} if _wait else None,
                         headers={"content-type": "application/json"}, session=True,
                         timeout=httpx2.Timeout(connect=10.0, read=_wait + 60.0, write=60.0, pool=30.0))
    return TaskHandle(client, pid, record)


def request_task(*, task_type: str, task_name: str, task_input: dict[str, Any], timeout_sec: float = 60,
                 project_id: str | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Request a task and wait for its result (None for an action); ``progress`` sees each status change.

    After ``timeout_sec``, a job no backend took is cancelled (nothing is left queued) and
    :class:`TaskTimeoutError` says so; one that is running goes on (a calculation's result is
    then cached for the next request).
    """
    if not isinstance(timeout_sec, (int, float)) or isinstance(timeout_sec, bool) or not timeout_sec > 0:
        raise InvalidArgumentError("timeout_sec", timeout_sec, "expected seconds > 0")
    started = time.monotonic()
    # Without a progress callback the request itself waits (a bounded while) for the job's end.
    handle = submit_task(task_type=task_type, task_name=task_name, task_input=task_input, project_id=project_id,
                         _wait=0 if progress is not None else round(min(float(timeout_sec), 30.0), 3))
    if progress is not None:
        progress(handle._record)
    record = handle.wait(max(0.0, timeout_sec - (time.monotonic() - started)), on_update=progress)
    if record["status"] == "pending":
        try:
            record = handle._record = handle._client.json("POST", handle._path + "/cancel")
        except HubError:
            pass
        if record["status"] in TERMINAL and record["status"] != "cancelled":
            return _outcome(handle, record, timeout_sec)  # it ended just then
        record = {**record, "status": "pending"}
    return _outcome(handle, record, timeout_sec)


#: Inputs one request of :func:`submit_tasks` carries, and jobs one wait of :func:`gather_tasks` names
#: (the hub's limit); longer lists go in several.
BATCH = 1000
#: Bytes of task inputs one batch request carries at most (under the hub's 4 MiB body limit).
BATCH_BYTES = 3 * 1024 * 1024


def submit_tasks(*, task_type: str, task_name: str, task_inputs: Sequence[dict[str, Any]],
                 project_id: str | None = None) -> list[TaskHandle]:
    """Request one task for many inputs at once (as ``Client.map`` does in Dask): their handles, in order.

    One request to the hub per 1,000 inputs (or 3 MiB of them) instead of one each; each job is
    what :func:`submit_task` would give (a cached calculation is finished already, a running one
    joined). Wait for them with :func:`gather_tasks`.
    """
    check_task_type(task_type)
    check_task_name(task_name)
    if isinstance(task_inputs, (dict, str, bytes)) or not isinstance(task_inputs, Sequence):
        raise InvalidArgumentError("task_inputs", task_inputs, "expected a list of dicts (one per task)")
    encoded = []
    for i, task_input in enumerate(task_inputs):
        try:
            encoded.append(encode_input(task_input))
        except TaskInputError as e:  # named as the list holds it: task_inputs[3]['x']
            raise TaskInputError(e.path.replace("task_input", f"task_inputs[{i}]", 1), e.reason) from None
    client = _hub.connect_for("requesting tasks", write=task_type == "action")
    pid = get_project_id(project_id)
    if client.ephemeral:  # no key, no body: each is looked up in the cache
        return [submit_task(task_type=task_type, task_name=task_name, task_input=t, project_id=pid)
                for t in task_inputs]
    import httpx2

    head = '{"task_name":' + json.dumps(task_name) + ',"task_type":"' + task_type + '","task_inputs":['
    handles: list[TaskHandle] = []
    start = 0
    while start < len(encoded):
        end, size = start, 0
        while end < len(encoded) and end - start < BATCH and (end == start or size + len(encoded[end]) < BATCH_BYTES):
            size += len(encoded[end]) + 1
            end += 1
        body = (head + ",".join(encoded[start:end]) + "]}").encode()
        answer = client.json("POST", _tasks_path(pid) + "/requests/batch", content=body, session=True,
                             headers={"content-type": "application/json"},
                             timeout=httpx2.Timeout(connect=10.0, read=120.0, write=120.0, pool=30.0))
        handles += [TaskHandle(client, pid, record) for record in answer["jobs"]]
        start = end
    return handles


def gather_tasks(handles: Sequence[TaskHandle], *, timeout: float | None = None) -> list[Any]:
    """The results of ``handles`` in order (as ``Client.gather`` does in Dask), waiting up to ``timeout``
    seconds in all; the first that failed raises its error (:class:`TaskError`, :class:`TaskCancelledError`,
    or :class:`TaskTimeoutError` for one not finished in time). One long-poll of the hub per 1,000 jobs
    at a time, answered as soon as they all ended."""
    import httpx2

    deadline = None if timeout is None else time.monotonic() + timeout
    groups: dict[tuple[str, str], list[TaskHandle]] = {}
    for h in handles:
        groups.setdefault((h._client.url, h.project_id), []).append(h)
    for group in groups.values():
        client, pid = group[0]._client, group[0].project_id
        while True:
            waiting = [h for h in group if h._record["status"] not in TERMINAL]
            left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
            if not waiting or left <= 0:
                break
            chunk = {h.job_id: h for h in waiting[:BATCH]}
            try:
                answer = client.json("POST", _tasks_path(pid) + "/jobs/wait", session=True,
                                     json={"job_ids": list(chunk), "wait": round(max(left, 0.0), 3)},
                                     timeout=httpx2.Timeout(connect=10.0, read=left + 30.0, write=30.0, pool=30.0))
            except (HubUnavailableError, HubServerError):
                time.sleep(0.2)  # the hub restarts, or a session broke: ask again
                continue
            for record in answer["jobs"]:
                for h in group:  # (a job listed twice: both handles)
                    if h.job_id == record["job_id"]:
                        h._record = record
    return [_outcome(h, h._record, timeout) for h in handles]


def list_task_backends(project_id: str | None = None) -> list[dict[str, Any]]:
    """Backends of the project seen recently, with the handlers they serve and their last heartbeat."""
    client = _hub.connect_for("listing task backends")
    backends: list[dict[str, Any]] = client.json("GET", _tasks_path(get_project_id(project_id)) + "/backends")["backends"]
    return backends


def list_task_jobs(project_id: str | None = None, *, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
    """The project's recent jobs, newest first (results left out)."""
    client = _hub.connect_for("listing task jobs")
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    jobs: list[dict[str, Any]] = client.json("GET", _tasks_path(get_project_id(project_id)) + "/jobs", params=params)["jobs"]
    return jobs


# ---------------------------------------------------------------- serving


class Executor(Protocol):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    def shutdown(self, wait: bool = True) -> None: ...


@dataclass
class _Handler:
    task_type: str
    function: Callable[..., Any]
    extra_kwargs: dict[str, Any]


@dataclass
class _Running:
    job_id: str
    task_name: str
    ctx: _JobContext
    future: Any = None


class TaskBackend:
    """Serves task handlers for a project: claims its jobs from the hub and runs them on an executor.

    ``run()`` blocks (Ctrl-C stops it cleanly); ``start()`` and ``stop()`` serve in the background,
    as does ``with TaskBackend(...) as backend:``. ``executor``: a thread pool of ``num_workers`` by
    default, or anything with ``submit`` and ``shutdown`` (see :class:`kachery_core.DaskExecutor`).
    """

    def __init__(self, *, project_id: str | None = None, backend_id: str | None = None, num_workers: int = 4,
                 executor: Executor | None = None, label: str | None = None,
                 threads_per_worker: int | None = None) -> None:
        # threads_per_worker: kachery-cloud's keyword, accepted so its scripts run; workers are threads here.
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise InvalidArgumentError("num_workers", num_workers, "expected an int >= 1")
        if backend_id is not None and (not isinstance(backend_id, str) or not 1 <= len(backend_id) <= 100
                                       or not set(backend_id) <= _NAME_CHARS or backend_id in (".", "..")):
            raise InvalidArgumentError("backend_id", backend_id,
                                       "expected 1 to 100 letters, digits, '_', '.' or '-' (not '.' or '..')")
        self._project_arg = project_id
        self.project_id: str | None = None
        self.backend_id = backend_id or "b" + secrets.token_hex(8)
        self.num_workers = num_workers
        self.label = label
        self._executor = executor
        self._own_executor = executor is None
        self.handlers: dict[str, _Handler] = {}
        self._running: dict[str, _Running] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._known_cancels: set[str] = set()  # cancels already heard of (not to be reported again)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Event()  # handlers changed: register again
        self._slot_freed = threading.Event()  # a worker finished: the claim loop may take a job
        self._threads: list[threading.Thread] = []
        self._client: _hub.HubClient | None = None
        self._completions = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kachery-task-done")
        self.lease_seconds = 20.0

    def __enter__(self) -> TaskBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.handlers)) or "no handlers"
        state = "serving" if self._threads and not self._stop.is_set() else "stopped"
        return f"<TaskBackend {self.backend_id} {state}: {names}>"

    def register_task_handler(self, *, task_type: str, task_name: str, task_function: Callable[..., Any],
                              extra_kwargs: dict[str, Any] | None = None) -> None:
        """Serve ``task_function`` as ``task_name``; registering a name again replaces its handler."""
        check_task_type(task_type)
        check_task_name(task_name)
        if not callable(task_function):
            raise InvalidArgumentError("task_function", task_function, "expected a callable")
        check = getattr(self._executor, "check_function", None)
        if check is not None:
            check(task_function, task_name)
        with self._lock:
            self.handlers[task_name] = _Handler(task_type, task_function, dict(extra_kwargs or {}))
        self._announce()

    def unregister_task_handler(self, task_name: str) -> None:
        with self._lock:
            self.handlers.pop(task_name, None)
        self._announce()

    def _announce(self) -> None:
        """Tell the hub the handlers now (while serving), so requests for a new one are claimed at once."""
        self._changed.set()
        if self._threads and not self._stop.is_set():
            try:
                self._register()
            except (HubUnavailableError, HubServerError) as e:  # the claim loop tries again
                log.warning("task backend %s could not announce its handlers yet: %s", self.backend_id, e)

    # lifecycle
    def start(self) -> None:
        """Register with the hub and serve in background threads (returns at once)."""
        if self._threads and not self._stop.is_set():
            return
        self._client = _hub.connect_for("serving tasks", write=True)
        self.project_id = get_project_id(self._project_arg)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.num_workers, thread_name_prefix=f"kachery-task-{self.backend_id}")
        self._stop.clear()
        self._register()
        self._threads = [threading.Thread(target=self._claim_loop, name=f"kachery-task-claim-{self.backend_id}", daemon=True),
                         threading.Thread(target=self._progress_loop, name=f"kachery-task-progress-{self.backend_id}",
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def run(self) -> None:
        """Serve until Ctrl-C (or :meth:`stop` from another thread); then stop cleanly."""
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("stopping task backend %s", self.backend_id)
        finally:
            self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running jobs finish (up to ``timeout`` s), and leave the hub.

        Jobs still running after that go back to the queue for another backend.
        """
        if not self._threads:
            return
        self._stop.set()  # claim no more; the claim loop keeps renewing the leases of running jobs
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            # Leaving wakes the claim loop's long-poll (it then ends), and hands unfinished jobs back.
            assert self._client is not None and self.project_id is not None
            self._client.json("DELETE", f"{_tasks_path(self.project_id)}/backends/{self.backend_id}")
        except HubError as e:
            log.warning("task backend %s could not say goodbye to the hub: %s", self.backend_id, e)
        for t in self._threads:
            t.join(max(1.0, deadline - time.monotonic()))
        self._completions.shutdown(wait=True)
        self._completions = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kachery-task-done")
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self._threads = []

    # talking to the hub
    def _register(self) -> None:
        assert self._client is not None and self.project_id is not None
        self._changed.clear()
        with self._lock:
            handlers = [{"task_type": h.task_type, "task_name": name} for name, h in self.handlers.items()]
        info = self._client.json("PUT", f"{_tasks_path(self.project_id)}/backends/{self.backend_id}",
                                 json={"handlers": handlers, "label": self.label, "num_workers": self.num_workers})
        self.lease_seconds = float(info.get("lease_seconds", self.lease_seconds))

    def _claim(self, max_jobs: int, wait: float) -> dict[str, Any]:
        assert self._client is not None and self.project_id is not None
        import httpx2

        with self._lock:
            running = list(self._running)
            progress, self._progress = self._progress, {}
            self._known_cancels &= set(running)
            known = list(self._known_cancels)
        return dict(self._client.json(
            "POST", f"{_tasks_path(self.project_id)}/backends/{self.backend_id}/claim", session=True,
            on_part=self._claimed_part,
            json={"max_jobs": max_jobs, "wait": wait, "running": running, "progress": progress,
                  "known_cancels": known, "stream": max_jobs > 1},
            timeout=httpx2.Timeout(connect=10.0, read=wait + 30.0, write=30.0, pool=30.0)))

    def _claim_loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set() or self._running:
            try:
                if self._changed.is_set() and not self._stop.is_set():
                    self._register()
                with self._lock:
                    # Up to as many again as there are workers wait here, claimed ahead: a worker that ends takes
                    # the next at once instead of after a claim (their leases are renewed like the running ones).
                    free = 0 if self._stop.is_set() else 2 * self.num_workers - len(self._running)
                # Renew leases well before they lapse: the long-poll returns after a third of the lease. With
                # every worker busy, a worker that finishes takes its next job itself (with its result), and this
                # loop asks every half second: renewals, cancels, and a slot a finished worker left unused.
                renew = max(0.5, min(10.0, self.lease_seconds / 3))
                if free <= 0 and not self._stop.is_set():
                    # Every worker busy: a long-poll could take no job, so wait here for a worker to finish (then
                    # claim at once); every half second renew the leases and hear of cancels without waiting.
                    if self._slot_freed.wait(min(0.5, renew)):
                        self._slot_freed.clear()
                        continue
                answer = self._claim(max(0, free), wait=renew if free > 0 else 0)
                delay = 0.1
            except (HubUnavailableError, HubServerError) as e:
                log.warning("task backend %s cannot reach the hub (%s); retrying", self.backend_id, e)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            except HubNotFoundError as e:
                if e.code != "backend_not_found":
                    raise
                if self._stop.is_set():  # it left the hub (stop)
                    return
                self._changed.set()  # the hub forgot it (a restart on a new database): register again
                continue
            for job_id in answer.get("cancel", []):
                with self._lock:
                    job = self._running.get(job_id)
                    self._known_cancels.add(job_id)
                if job is not None:
                    job.ctx.cancel.set()
            for job in answer.get("jobs", []):
                if self._stop.is_set():
                    break
                self._start_job(job)

    def _claimed_part(self, part: bytes) -> None:
        """Jobs the hub handed to the waiting claim, ahead of its answer (on a session): start them.

        Called on the session's reader thread: a thread pool's ``submit`` returns at once; another
        executor (Dask's may take its time sending the function) is given the job from another thread.
        """
        for job in json.loads(part).get("jobs", []):
            if self._stop.is_set():
                break
            if getattr(self._executor, "remote", False):
                self._completions.submit(self._start_job, job)
            else:
                self._start_job(job)

    def _progress_loop(self) -> None:
        # Progress reported by handlers goes to the hub at most 4 times a second, beside the claim loop.
        while not self._stop.wait(0.25):
            with self._lock:
                pending = bool(self._progress)
            if pending:
                try:
                    self._claim(0, 0)
                except HubError as e:
                    log.debug("progress not sent: %s", e)

    def _start_job(self, job: dict[str, Any]) -> None:
        job_id, name = job["job_id"], job["task_name"]
        with self._lock:
            handler = self.handlers.get(name)
        if handler is None or handler.task_type != job["task_type"]:
            # (from another thread: this may run on the session's reader, which must not wait for the hub)
            self._completions.submit(self._complete, job_id, "error", {
                "type": "HandlerNotFound", "traceback": None,
                "message": f"backend {self.backend_id} no longer serves {name!r}"})
            return

        def report(fraction: float | None, message: str | None) -> None:
            with self._lock:
                self._progress[job_id] = {"fraction": fraction, "message": message}

        ctx = _JobContext(job_id, name, report=report)
        running = _Running(job_id, name, ctx)
        with self._lock:
            self._running[job_id] = running
        kwargs = {**job["task_input"], **handler.extra_kwargs}
        assert self._executor is not None
        remote = getattr(self._executor, "remote", False)
        try:
            if remote:
                future = self._executor.submit(_run_handler, handler.function, kwargs, None)
            else:  # in this process: the worker thread reports the result itself (no hand-over to another thread)
                future = self._executor.submit(self._run_here, job_id, handler.function, kwargs, ctx)
        except Exception as e:  # the executor refused it (e.g. a function Dask cannot send)
            self._completions.submit(self._finish, job_id, "error", {
                "type": type(e).__qualname__, "message": str(e), "traceback": traceback.format_exc()})
            return
        running.future = future
        if remote:
            future.add_done_callback(lambda f: self._completions.submit(self._done, job_id, f))

    def _run_here(self, job_id: str, function: Callable[..., Any], kwargs: dict[str, Any], ctx: _JobContext) -> None:
        self._done(job_id, None, _run_handler(function, kwargs, ctx))

    def _done(self, job_id: str, future: Any, outcome: tuple[str, Any] | None = None) -> None:
        try:
            status, payload = outcome if outcome is not None else future.result()
        except BaseException as e:  # noqa: BLE001 - a worker lost (Dask), the pool shut down...
            status, payload = "error", {"type": type(e).__qualname__, "message": str(e),
                                        "traceback": traceback.format_exc()}
        with self._lock:
            running = self._running.get(job_id)
        if status == "finished" and running is not None and running.ctx.cancel.is_set():
            status, payload = "cancelled", None
        self._finish(job_id, status, payload)

    def _finish(self, job_id: str, status: str, payload: Any) -> None:
        try:
            self._complete(job_id, status, payload)
        finally:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._progress.pop(job_id, None)
        self._slot_freed.set()

    def _after_complete(self, job_id: str, jobs: list[dict[str, Any]]) -> None:
        """The slot of ``job_id`` is free; start the jobs claimed with its completion."""
        self._release(job_id)
        for job in jobs:
            self._start_job(job)

    def _complete(self, job_id: str, status: str, payload: Any) -> None:
        assert self._client is not None and self.project_id is not None
        # Only the result: the claim loop takes the next jobs once this slot is free (as many at once as
        # are free), so the requester's answer waits for no claim.
        body: dict[str, Any] = {"backend_id": self.backend_id, "status": status}
        if status == "finished":
            try:
                encoded = canonical_json(payload)
            except (TypeError, ValueError) as e:
                body.update(status="error", error={"type": "TaskResultError", "traceback": None,
                                                   "message": f"the result is not JSON: {e}"})
                encoded = None
            if encoded is not None and len(encoded) > _constants.MAX_TASK_RESULT_INLINE_BYTES:
                from ._remote import _store_bytes

                body["result_uri"] = _store_bytes(encoded.encode("ascii"), f"task-result-{job_id}.json", False,
                                                  False, self.project_id)
            elif encoded is not None:
                body["result"] = payload
        elif status == "error":
            body["error"] = payload
        for attempt in range(5):
            try:
                answer = self._client.json("POST", f"{_tasks_path(self.project_id)}/jobs/{job_id}/complete", json=body,
                                           session=True)
                self._after_complete(job_id, answer.get("jobs", []))
                return
            except (HubUnavailableError, HubServerError) as e:
                log.warning("could not report job %s (%s); retrying", job_id, e)
                time.sleep(0.2 * 2**attempt)
            except HubError as e:  # lease lost: another backend has it now
                log.warning("the result of job %s was not recorded: %s", job_id, e)
                return
