"""Tasks: backends serve named functions for a project; members request them; calculations are cached.

A *backend* (a lab server, a notebook kernel) registers handlers ``(task_type, task_name)``
and claims jobs. A *job* is one run: pending → started → finished | error | cancelled.

- A ``calculation``'s job id is ``sha1_of_dict({"taskInput": ..., "taskName": ...})`` (kachery-cloud's),
  so a project holds one job per calculation and its row is the cache: a finished one is answered at
  once, a pending or running one is joined, an errored or cancelled one runs again.
- An ``action`` gets a new job per request and is never cached.

Jobs live in the database, so a request made while no backend is online waits in the queue. A
backend claims a job under a lease (``Settings.task_lease_seconds``) that it renews with every
claim request while it works; a job whose lease lapses (the backend died or lost the network) goes
back to the queue, and after ``MAX_ATTEMPTS`` starts ends as an error saying so. Claims take
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so hub replicas share one queue.

Wake-ups (:mod:`._wakeup`): ``queue:<project>`` when a job becomes claimable or a cancel is asked
(backends long-poll on it), ``job:<project>:<job id>`` when a job changes (requesters follow it
with an event stream). Who may: requesting a calculation or reading a job takes read (anyone for a
public-read project); requesting an action, serving (register, claim, complete) and cancelling
someone else's job take write.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import Connection, select, update
from starlette.concurrency import run_in_threadpool

from kachery_core import _constants
from kachery_core._hashing import sha1_of_dict
from kachery_core._serializers import canonical_json
from kachery_core._uris import parse_sha1_uri
from kachery_core.errors import KacheryError

from . import _database as tables
from ._auth import Caller, SignedRequest, in_thread, json_object_body, signed_request
from ._feeds import require_json
from ._handoff import Waiter
from ._projects import _RANK, require_role
from ._state import HubState
from ._wakeup import Subscription
from ._streams import PARTIAL, StreamSlot, event, event_stream
from ._text import Line
from .errors import Conflict, Forbidden, HubError, InvalidInput, NotFound, PayloadTooLarge

router = APIRouter(tags=["tasks"])

TASK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
# Not only dots: "." and ".." are path segments that clients and proxies rewrite.
BACKEND_ID_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,100}")
JOB_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")
TASK_TYPES = ("calculation", "action")
TERMINAL = ("finished", "error", "cancelled")
#: Starts a job gets before it ends as an error (its backends kept disappearing).
MAX_ATTEMPTS = 3
#: Jobs one claim may take, and handlers one backend may serve.
MAX_CLAIM = 100
MAX_HANDLERS = 1000
#: Requests in one batch, and jobs one wait may name.
MAX_BATCH = 1000
#: Results one answer to a wait carries at most (bytes of JSON); the others are fetched one by one.
MAX_WAIT_RESULTS_BYTES = 8 * 1024 * 1024
#: Jobs one backend may say it runs (each is a bound parameter of one statement: SQLite takes 32,766).
MAX_RUNNING = 10_000
#: Longest a claim long-polls, and a job stream lasts when asked to wait.
MAX_CLAIM_WAIT = 60.0

TaskType = Literal["calculation", "action"]


class JobNotFound(NotFound):
    code = "job_not_found"


class BackendNotFound(NotFound):
    code = "backend_not_found"


class LeaseLost(Conflict):
    code = "lease_lost"


def queue_channel(project_id: str) -> str:
    return f"queue:{project_id}"


def job_channel(project_id: str, job_id: str) -> str:
    return f"job:{project_id}:{job_id}"


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(f"{str(value)[:220]!r} is not a valid {what}", field=what)
    return value


def check_task_name(name: str) -> str:
    if not isinstance(name, str) or not TASK_NAME_RE.fullmatch(name):
        raise InvalidInput(f"{str(name)[:220]!r} is not a task name (1 to 200 letters, digits, '_', '.' or '-')",
                           field="task_name")
    return name


def _canonical(value: Any, what: str, limit: int) -> str:
    try:
        encoded = canonical_json(value)
    except (TypeError, ValueError, RecursionError):
        raise InvalidInput(f"{what} holds a value JSON cannot represent") from None
    if len(encoded) > limit:
        raise PayloadTooLarge(f"{what} is {len(encoded)} bytes of JSON, over the limit of {limit} bytes")
    return encoded


# ---------------------------------------------------------------- the job record

_JOB = "SELECT * FROM task_jobs WHERE project_id = :project_id AND job_id = :job_id"


def _job_row(conn: Connection, project_id: str, job_id: str) -> Any:
    return tables.fetch_one(conn, _JOB, {"project_id": project_id, "job_id": job_id})


def _email(conn: Connection, user_id: str | None) -> str | None:
    if user_id is None:
        return None
    row = conn.execute(select(tables.users.c.email).where(tables.users.c.id == user_id)).first()
    return None if row is None else str(row.email)


def job_record(conn: Connection | None, row: Any, *, member: bool, with_result: bool = True,
               caller: Caller | None = None, emails: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reader sees of a job (a row of task_jobs); the requester's email only for members
    (``emails``: looked up already, by ``"user:" + user id``)."""
    if not member:
        requested_by = None
    elif caller is not None and caller.user_id is not None and row.requested_by == caller.user_id:
        requested_by = caller.email  # the caller's own request: no lookup
    elif emails is not None and "user:" + str(row.requested_by) in emails:
        requested_by = emails["user:" + str(row.requested_by)]
    else:
        assert conn is not None, "another requester's email is looked up"
        requested_by = _email(conn, row.requested_by)
    record: dict[str, Any] = {
        "job_id": row.job_id, "project_id": row.project_id, "task_type": row.task_type,
        "task_name": row.task_name, "status": row.status, "attempts": row.attempts,
        "requested_by": requested_by,
        "requested_at": row.requested_at, "started_at": row.started_at, "finished_at": row.finished_at,
        "backend_id": row.backend_id if member else None,
        "progress": json.loads(row.progress) if row.progress else None,
        "error": json.loads(row.error) if row.error else None,
        "result_uri": row.result_uri, "cancel_requested": bool(row.cancel_requested), "version": row.version,
        "lease_expires_at": row.lease_expires_at,
        "has_result": row.status == "finished",
    }
    if with_result and row.status == "finished" and row.result is not None:
        record["result"] = json.loads(row.result)
    return record


def _is_member(conn: Connection, who: Caller, project_id: str) -> bool:
    if who.user_id is None:
        return False
    row = conn.execute(select(tables.members.c.role).where(
        tables.members.c.project_id == project_id, tables.members.c.user_id == who.user_id)).first()
    return row is not None


# ---------------------------------------------------------------- requests


def _task_kind(body: dict[str, Any]) -> tuple[str, str]:
    task_type, task_name = body.get("task_type"), body.get("task_name")
    if task_type not in TASK_TYPES:
        raise InvalidInput(f"task_type must be 'calculation' or 'action', not {str(task_type)[:40]!r}",
                           field="task_type")
    if not isinstance(task_name, str):
        raise InvalidInput(f"task_name must be a string, not {json.dumps(task_name)[:40]}", field="task_name")
    return str(task_type), check_task_name(task_name)


def _request(conn: Connection, who: Caller, hub: HubState, project_id: str, raw: bytes,
             taken: list[Waiter]) -> dict[str, Any]:
    body = json_object_body(raw)
    task_type, task_name = _task_kind(body)
    task_input = body.get("task_input")
    if not isinstance(task_input, dict):
        raise InvalidInput("task_input must be a JSON object", field="task_input")
    encoded = _canonical(task_input, "task_input", _constants.MAX_TASK_INPUT_BYTES)
    project = require_role(conn, who, project_id, "read" if task_type == "calculation" else "write")
    member = project.caller_role is not None
    row = _one_request(conn, who, hub, project_id, task_type, task_name, task_input, encoded, taken)
    return {**job_record(conn, row, member=member, caller=who), "_member": member, "_caller": who}


def _request_batch(conn: Connection, who: Caller, hub: HubState, project_id: str, raw: bytes,
                   taken: list[Waiter]) -> dict[str, Any]:
    body = json_object_body(raw)
    task_type, task_name = _task_kind(body)
    inputs = body.get("task_inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_BATCH:
        raise InvalidInput(f"task_inputs must be a list of 1 to {MAX_BATCH} JSON objects", field="task_inputs")
    encoded = []
    for i, task_input in enumerate(inputs):
        if not isinstance(task_input, dict):
            raise InvalidInput(f"task_inputs[{i}] must be a JSON object", field="task_inputs")
        encoded.append(_canonical(task_input, f"task_inputs[{i}]", _constants.MAX_TASK_INPUT_BYTES))
    project = require_role(conn, who, project_id, "read" if task_type == "calculation" else "write")
    member = project.caller_role is not None
    rows = [_one_request(conn, who, hub, project_id, task_type, task_name, task_input, text, taken)
            for task_input, text in zip(inputs, encoded)]
    return {"jobs": [job_record(conn, row, member=member, caller=who) for row in rows]}


def _one_request(conn: Connection, who: Caller, hub: HubState, project_id: str, task_type: str, task_name: str,
                 task_input: dict[str, Any], encoded: str, taken: list[Waiter]) -> Any:
    """The job of one request (new, joined, cached, or run again), handed to a waiting claim when it can be."""
    now = time.time()
    if task_type == "action":
        job_id = "a" + secrets.token_hex(20)
    else:
        try:
            job_id = sha1_of_dict({"taskInput": task_input, "taskName": task_name})
        except KacheryError as e:
            raise InvalidInput(str(e), field="task_input") from None
    row: Any = None if task_type == "action" else _job_row(conn, project_id, job_id)
    if row is not None and row.task_type != task_type:
        raise Conflict(f"job {job_id} of task {task_name!r} is a {row.task_type}, not a {task_type}")
    fresh = {"status": "pending", "attempts": 0, "requested_by": who.user_id, "requested_at": now,
             "started_at": None, "finished_at": None, "backend_id": None, "lease_expires_at": None, "progress": None,
             "result": None, "result_uri": None, "error": None, "cancel_requested": False}
    if row is None:
        values = {"project_id": project_id, "job_id": job_id, "task_type": task_type, "task_name": task_name,
                  "task_input": encoded, **fresh, "version": 1}
        # Requests of one new calculation may race (PostgreSQL runs them at once): one inserts, the others join.
        inserted = tables.run_sql(conn, _INSERT_JOB, values)
        row = SimpleNamespace(**values) if inserted else _job_row(conn, project_id, job_id)
    elif row.status in ("error", "cancelled"):  # a calculation that did not finish runs again
        j = tables.task_jobs
        reset = conn.execute(update(j).where(j.c.project_id == project_id, j.c.job_id == job_id,
                                             j.c.version == row.version).values(**fresh, version=row.version + 1))
        if reset.rowcount:
            row = SimpleNamespace(**{**row._asdict(), **fresh, "version": row.version + 1})
        else:  # another request reset it first (PostgreSQL): join that one
            row = _job_row(conn, project_id, job_id)
    if row.status == "pending":
        handed = _hand_over(conn, hub, project_id, row, task_input, taken)
        if handed is not None:
            return handed
        hub.wakeups.publish(conn, queue_channel(project_id), 0)
    return row


def _hand_over(conn: Connection, hub: HubState, project_id: str, row: Any, task_input: dict[str, Any],
               taken: list[Waiter]) -> Any:
    """Give the pending job ``row`` to a backend's claim waiting in this process (see _handoff), in
    this transaction: the job's new row, or None (no such claim, or it may no longer serve)."""
    waiter = hub.task_waiters.take(project_id, f"{row.task_type}:{row.task_name}")
    if waiter is None:
        return None
    taken.append(waiter)  # answered once this transaction ends, whatever becomes of it
    # Its claim was checked when it began to wait; its access (or its backend) may have changed since.
    role = tables.fetch_one(conn, _WRITER, {"p": project_id, "b": waiter.backend_id, "c": waiter.client_id,
                                            "u": waiter.user_id})
    if role is None or _RANK.get(role[0], 0) < _RANK["write"]:
        return None  # its claim runs a pass of its own, which says why
    now = time.time()
    new = tables.fetch_one(conn, _START, {"p": project_id, "j": row.job_id, "b": waiter.backend_id, "now": now,
                                          "exp": now + hub.settings.task_lease_seconds})
    if new is None:
        return None
    waiter.job = {"job_id": new.job_id, "task_type": new.task_type, "task_name": new.task_name,
                  "task_input": task_input, "attempt": new.attempts}
    return new


_WRITER = ("SELECT m.role FROM task_backends b JOIN members m ON m.project_id = b.project_id AND m.user_id = :u "
           "WHERE b.project_id = :p AND b.backend_id = :b AND b.client_id = :c")
_START = ("UPDATE task_jobs SET status = 'started', backend_id = :b, attempts = attempts + 1, started_at = :now, "
          "lease_expires_at = :exp, progress = NULL, version = version + 1 "
          "WHERE project_id = :p AND job_id = :j AND status = 'pending' RETURNING *")


def _settle(hub: HubState, project_id: str, waiter: Waiter, committed: bool) -> None:
    """After the transaction that took ``waiter``: its claim gets the job (or runs a pass of its own)."""
    if not committed:
        waiter.job = None
    elif waiter.gone and waiter.job is not None:  # its claim stopped waiting meanwhile (the backend left)
        asyncio.get_running_loop().create_task(_give_back(hub, project_id, waiter.backend_id, waiter.job["job_id"]))
    waiter.settled.set()
    waiter.wake()


async def _give_back(hub: HubState, project_id: str, backend_id: str, job_id: str) -> None:
    def back(conn: Connection) -> int:
        done = tables.run_sql(conn, _GIVE_BACK, {"p": project_id, "j": job_id, "b": backend_id})
        if done:
            hub.wakeups.publish(conn, queue_channel(project_id), 0)
        return done

    if await in_thread(hub.db.run, back):
        hub.wakeups.notify(queue_channel(project_id), 0)


_GIVE_BACK = ("UPDATE task_jobs SET status = 'pending', backend_id = NULL, started_at = NULL, lease_expires_at = NULL, "
              "attempts = attempts - 1, version = version + 1 "
              "WHERE project_id = :p AND job_id = :j AND status = 'started' AND backend_id = :b")
_INSERT_JOB = (
    "INSERT INTO task_jobs (project_id, job_id, task_type, task_name, task_input, status, attempts, requested_by, "
    "requested_at, started_at, finished_at, backend_id, lease_expires_at, progress, result, result_uri, error, "
    "cancel_requested, version) VALUES (:project_id, :job_id, :task_type, :task_name, :task_input, :status, "
    ":attempts, :requested_by, :requested_at, :started_at, :finished_at, :backend_id, :lease_expires_at, :progress, "
    ":result, :result_uri, :error, :cancel_requested, :version) ON CONFLICT (project_id, job_id) DO NOTHING"
)


def _reread(hub: HubState, project_id: str, job_id: str, member: bool) -> dict[str, Any]:
    """The job again, for the caller its request was answered to (access was checked then)."""
    with hub.db.read() as conn:
        row = _job_row(conn, project_id, job_id)
        if row is None:
            raise JobNotFound(f"project {project_id!r} has no job {job_id!r}", job_id=job_id)
        return job_record(conn, row, member=member)


def _lapse_now(conn: Connection, hub: HubState, project_id: str) -> list[tuple[str, int]]:
    changed, next_lapse = _lapse(conn, hub, project_id, time.time())
    hub.next_lapse[project_id] = next_lapse
    for job_id, version in changed:
        hub.wakeups.publish(conn, job_channel(project_id, job_id), version)
    if changed:
        hub.wakeups.publish(conn, queue_channel(project_id), 0)
    return changed


def _lapsed(record: dict[str, Any]) -> bool:
    expires = record.get("lease_expires_at")
    return record.get("status") == "started" and expires is not None and expires < time.time()


async def settle(hub: HubState, project_id: str) -> None:
    """Hand back (or end) the project's jobs whose lease lapsed, now: a reader must not wait on a
    backend that is gone until another backend of the project happens to claim."""
    changed = await run_in_threadpool(hub.db.run, _lapse_now, hub, project_id)
    for job_id, version in changed:
        hub.wakeups.notify(job_channel(project_id, job_id), version)
    if changed:
        hub.wakeups.notify(queue_channel(project_id), 0)


def _until_lapse(record: dict[str, Any], limit: float) -> float:
    """How long a reader of ``record`` may wait: ``limit``, or less when its lease lapses sooner."""
    expires = record.get("lease_expires_at")
    if record.get("status") == "started" and expires is not None:
        return max(0.0, min(limit, float(expires) - time.time() + 0.05))
    return limit


def _get_job(conn: Connection, who: Caller, project_id: str, job_id: str) -> dict[str, Any]:
    require_role(conn, who, project_id, "read")
    row = _job_row(conn, project_id, job_id)
    if row is None:
        raise JobNotFound(f"project {project_id!r} has no job {job_id!r}", job_id=job_id)
    return job_record(conn, row, member=_is_member(conn, who, project_id))


def _list_jobs(conn: Connection, who: Caller, project_id: str, limit: int, status: str | None) -> list[dict[str, Any]]:
    require_role(conn, who, project_id, "read")
    j = tables.task_jobs
    q = select(j).where(j.c.project_id == project_id)
    if status is not None:
        q = q.where(j.c.status == status)
    rows = conn.execute(q.order_by(j.c.requested_at.desc()).limit(limit)).all()
    member = _is_member(conn, who, project_id)
    return [job_record(conn, r, member=member, with_result=False) for r in rows]


def _cancel(conn: Connection, who: Caller, hub: HubState, project_id: str, job_id: str) -> dict[str, Any]:
    require_role(conn, who, project_id, "read")
    row = _job_row(conn, project_id, job_id)
    if row is None:
        raise JobNotFound(f"project {project_id!r} has no job {job_id!r}", job_id=job_id)
    if who.user_id is None or who.user_id != row.requested_by:
        require_role(conn, who, project_id, "write")  # someone else's job: writers only
    now = time.time()
    j = tables.task_jobs
    # Conditioned on the version read: if the job changed meanwhile (a backend claimed it), cancel what it is now.
    where = (j.c.project_id == project_id) & (j.c.job_id == job_id) & (j.c.version == row.version)
    if row.status == "pending":
        if not conn.execute(update(j).where(where).values(status="cancelled", finished_at=now, cancel_requested=True,
                                                          version=row.version + 1)).rowcount:
            return _cancel(conn, who, hub, project_id, job_id)
    elif row.status == "started" and not row.cancel_requested:
        if not conn.execute(update(j).where(where).values(cancel_requested=True, version=row.version + 1)).rowcount:
            return _cancel(conn, who, hub, project_id, job_id)
        hub.wakeups.publish(conn, queue_channel(project_id), 0)  # its backend long-polls there
    hub.wakeups.publish(conn, job_channel(project_id, job_id), row.version + 1)
    return _get_job(conn, who, project_id, job_id)


# ---------------------------------------------------------------- backends


def _backend_row(conn: Connection, project_id: str, backend_id: str) -> Any:
    return tables.fetch_one(conn, _BACKEND, {"p": project_id, "b": backend_id})


_BACKEND = "SELECT * FROM task_backends WHERE project_id = :p AND backend_id = :b"


def _own_backend(conn: Connection, who: Caller, project_id: str, backend_id: str) -> Any:
    require_role(conn, who, project_id, "write")
    row = _backend_row(conn, project_id, backend_id)
    if row is None:
        raise BackendNotFound(f"backend {backend_id!r} is not registered in project {project_id!r}; "
                              "register it first (PUT .../tasks/backends/{backend_id})", backend_id=backend_id)
    if row.client_id != who.client_id:
        raise Forbidden(f"backend {backend_id!r} of project {project_id!r} belongs to another client",
                        backend_id=backend_id)
    return row


class Handler(BaseModel):
    task_type: TaskType
    task_name: Line = Field(max_length=200)


class RegisterBackend(BaseModel):
    handlers: list[Handler] = Field(max_length=MAX_HANDLERS)
    label: Line | None = Field(default=None, max_length=200)
    num_workers: int = Field(default=1, ge=1, le=100_000)


def _register(conn: Connection, who: Caller, hub: HubState, project_id: str, backend_id: str,
              body: RegisterBackend) -> dict[str, Any]:
    user_id = who.require_user()
    require_role(conn, who, project_id, "write")
    for h in body.handlers:
        check_task_name(h.task_name)
    handlers = canonical_json([{"task_type": h.task_type, "task_name": h.task_name} for h in body.handlers])
    now = time.time()
    row = _backend_row(conn, project_id, backend_id)
    b = tables.task_backends
    if row is None:
        conn.execute(b.insert().values(project_id=project_id, backend_id=backend_id, user_id=user_id,
                                       client_id=who.client_id, label=body.label, handlers=handlers,
                                       num_workers=body.num_workers, started_at=now, last_seen=now))
    elif row.client_id != who.client_id:
        raise Forbidden(f"backend {backend_id!r} of project {project_id!r} belongs to another client",
                        backend_id=backend_id)
    else:
        conn.execute(update(b).where(b.c.project_id == project_id, b.c.backend_id == backend_id).values(
            label=body.label, handlers=handlers, num_workers=body.num_workers, last_seen=now))
    hub.wakeups.publish(conn, queue_channel(project_id), 0)
    return {"backend_id": backend_id, "project_id": project_id, "lease_seconds": hub.settings.task_lease_seconds}


def _unregister(conn: Connection, who: Caller, hub: HubState, project_id: str, backend_id: str) -> dict[str, Any]:
    _own_backend(conn, who, project_id, backend_id)
    j, b = tables.task_jobs, tables.task_backends
    # Its running jobs go back to the queue (a clean stop did not fail them: no attempt is counted).
    released = conn.execute(update(j).where(j.c.project_id == project_id, j.c.backend_id == backend_id,
                                            j.c.status == "started").values(
        status="pending", backend_id=None, lease_expires_at=None, attempts=j.c.attempts - 1,
        version=j.c.version + 1)).rowcount
    conn.execute(b.delete().where(b.c.project_id == project_id, b.c.backend_id == backend_id))
    hub.wakeups.publish(conn, queue_channel(project_id), 0)  # other backends: released jobs; its own long-poll: end
    return {"released": released}


def _list_backends(conn: Connection, who: Caller, hub: HubState, project_id: str) -> list[dict[str, Any]]:
    require_role(conn, who, project_id, "read")
    b = tables.task_backends
    since = time.time() - 2 * hub.settings.task_lease_seconds
    rows = conn.execute(select(b).where(b.c.project_id == project_id, b.c.last_seen >= since)
                        .order_by(b.c.started_at)).all()
    member = _is_member(conn, who, project_id)
    return [{"backend_id": r.backend_id, "label": r.label, "handlers": json.loads(r.handlers),
             "num_workers": r.num_workers, "started_at": r.started_at, "last_seen": r.last_seen,
             "user": _email(conn, r.user_id) if member else None} for r in rows]


class Claim(BaseModel):
    max_jobs: int = Field(default=1, ge=0, le=MAX_CLAIM)
    wait: float = Field(default=0, ge=0, le=MAX_CLAIM_WAIT)
    running: list[Line] = Field(default_factory=list, max_length=MAX_RUNNING)
    #: cancels the backend already heard of: not reported again (a claim with a new one returns at once)
    known_cancels: list[Line] = Field(default_factory=list, max_length=MAX_RUNNING)
    progress: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=10_000)
    #: on a session: jobs handed over while it waits come as parts of its answer, and it goes on waiting
    stream: bool = False


def _lapse(conn: Connection, hub: HubState, project_id: str, now: float) -> tuple[list[tuple[str, int]], float]:
    """Jobs whose lease lapsed: back to the queue, or an error after MAX_ATTEMPTS; their new versions,
    and when the next lease of the project can lapse."""
    j = tables.task_jobs
    rows = conn.execute(select(j.c.job_id, j.c.attempts, j.c.version, j.c.task_name, j.c.lease_expires_at).where(
        j.c.project_id == project_id, j.c.status == "started")).all()
    changed = []
    # A lease taken from now on ends at now + lease or later: none lapses before this.
    next_lapse = now + hub.settings.task_lease_seconds
    for r in rows:
        if r.lease_expires_at is not None and r.lease_expires_at >= now:
            next_lapse = min(next_lapse, r.lease_expires_at)
            continue
        # The lease in the condition too: on PostgreSQL a concurrent pass may have seen this row before
        # another backend claimed it again, and an UPDATE re-checks its condition on the newest row.
        where = ((j.c.project_id == project_id) & (j.c.job_id == r.job_id) & (j.c.status == "started")
                 & (j.c.lease_expires_at < now) & (j.c.version == r.version))
        if r.attempts >= MAX_ATTEMPTS:
            error = canonical_json({
                "type": "BackendLost", "traceback": None,
                "message": f"task {r.task_name!r} was started {r.attempts} times and each time the backend "
                           f"running it stopped answering (no lease renewal for {hub.settings.task_lease_seconds:g} s); "
                           "it is not tried again",
            })
            done = conn.execute(update(j).where(where).values(status="error", error=error, finished_at=now,
                                                              lease_expires_at=None, version=r.version + 1)).rowcount
        else:
            done = conn.execute(update(j).where(where).values(status="pending", backend_id=None,
                                                              lease_expires_at=None, version=r.version + 1)).rowcount
        if done:
            changed.append((r.job_id, r.version + 1))
    return changed, next_lapse


class Started(NamedTuple):
    """What a claim's wake-up of a job's waiters here says: it started (nothing they wait for)."""

    job_id: str
    status: str = "started"


def _listed(prefix: str, values: list[str]) -> tuple[str, dict[str, str]]:
    """Placeholders ``:p0, :p1, ...`` for an IN list, and their values."""
    named = {f"{prefix}{i}": v for i, v in enumerate(values)}
    return ", ".join(":" + k for k in named), named


def _claim(conn: Connection, who: Caller, hub: HubState, project_id: str, backend_id: str, body: Claim,
           ) -> tuple[dict[str, Any], list[tuple[str, int]], float | None, set[str]]:
    """One claim pass: renew, report progress, lapse, take jobs. Returns the answer, the jobs whose
    version changed (to wake their followers) and when the next lease can lapse.

    It runs for every wake-up of every waiting backend, so it skips what it can: the lapse scan
    until a lease can have lapsed (a bound kept per process), and the backend's last_seen until a
    quarter lease passed.
    """
    backend = _own_backend(conn, who, project_id, backend_id)
    now = time.time()
    lease = hub.settings.task_lease_seconds
    j = tables.task_jobs
    changed: list[tuple[str, int]] = []
    mine = (j.c.project_id == project_id) & (j.c.backend_id == backend_id) & (j.c.status == "started")
    cancel: list[str] = []
    if body.running:
        ids, named = _listed("r", body.running)
        held = (f"project_id = :p AND backend_id = :b AND status = 'started' AND job_id IN ({ids})")
        tables.run_sql(conn, f"UPDATE task_jobs SET lease_expires_at = :exp WHERE {held}",
                       {"p": project_id, "b": backend_id, "exp": now + lease, **named})
        known = set(body.known_cancels)
        cancel = [r[0] for r in tables.fetch_all(conn, f"SELECT job_id FROM task_jobs WHERE {held} AND cancel_requested",
                                                 {"p": project_id, "b": backend_id, **named})
                  if r[0] not in known]
    for job_id, progress in body.progress.items():
        encoded = _canonical({"fraction": progress.get("fraction"), "message": progress.get("message")},
                             "progress", 4096)
        if conn.execute(update(j).where(mine & (j.c.job_id == job_id)).values(
                progress=encoded, version=j.c.version + 1)).rowcount:
            changed.append((job_id, 0))  # (followers re-read the job: the number is only a wake-up)
    next_lapse = hub.next_lapse.get(project_id, 0.0)
    if now >= next_lapse:
        lapsed, next_lapse = _lapse(conn, hub, project_id, now)
        changed += lapsed
        hub.next_lapse[project_id] = next_lapse
    keys = [f"{h['task_type']}:{h['task_name']}" for h in json.loads(backend.handlers)]
    jobs: list[dict[str, Any]] = []
    if body.max_jobs and keys:
        names, named = _listed("k", keys)
        rows = tables.fetch_all(conn, (
            "SELECT job_id, task_type, task_name, task_input, attempts, version FROM task_jobs "
            f"WHERE project_id = :p AND status = 'pending' AND (task_type || ':' || task_name) IN ({names}) "
            "ORDER BY requested_at LIMIT :n" + ("" if conn.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED")),
            {"p": project_id, "n": body.max_jobs, **named})
        if rows:
            ids, taken = _listed("t", [r.job_id for r in rows])
            tables.run_sql(conn, (
                "UPDATE task_jobs SET status = 'started', backend_id = :b, attempts = attempts + 1, started_at = :now, "
                f"lease_expires_at = :exp, progress = NULL, version = version + 1 WHERE project_id = :p AND job_id IN ({ids})"),
                {"p": project_id, "b": backend_id, "now": now, "exp": now + lease, **taken})
        for r in rows:
            changed.append((r.job_id, r.version + 1))
            jobs.append({"job_id": r.job_id, "task_type": r.task_type, "task_name": r.task_name,
                         "task_input": json.loads(r.task_input), "attempt": r.attempts + 1})
    if now - hub.backend_seen.get((project_id, backend_id), 0.0) > lease / 4:
        b = tables.task_backends
        conn.execute(update(b).where(b.c.project_id == project_id, b.c.backend_id == backend_id).values(last_seen=now))
        hub.backend_seen[(project_id, backend_id)] = now
    for job_id, version in changed:
        hub.wakeups.publish(conn, job_channel(project_id, job_id), version)
    return {"jobs": jobs, "cancel": cancel, "lease_seconds": lease}, changed, next_lapse, set(keys)


class Complete(BaseModel):
    backend_id: Line = Field(max_length=100)
    status: Literal["finished", "error", "cancelled"]
    result: Any = None
    result_uri: Line | None = Field(default=None, max_length=300)
    error: dict[str, Any] | None = None
    #: claim this many more jobs in the same transaction (a worker that just finished takes the next)
    claim_next: int = Field(default=0, ge=0, le=MAX_CLAIM)
    running: list[Line] = Field(default_factory=list, max_length=MAX_RUNNING)


def _complete(conn: Connection, who: Caller, hub: HubState, project_id: str, job_id: str, raw: bytes,
              ) -> tuple[Any, dict[str, Any] | None, list[tuple[str, int]]]:
    """Record a job's end; its new row (its waiters here get it with their wake-up), and the jobs the
    backend claimed with it."""
    try:
        body = Complete.model_validate(json_object_body(raw))
    except ValueError as e:
        if isinstance(e, HubError):
            raise
        raise InvalidInput(f"invalid completion: {str(e)[:300]}") from None
    _own_backend(conn, who, project_id, _check(BACKEND_ID_RE, body.backend_id, "backend_id"))
    row = _job_row(conn, project_id, job_id)
    if row is None:
        raise JobNotFound(f"project {project_id!r} has no job {job_id!r}", job_id=job_id)
    if row.status != "started" or row.backend_id != body.backend_id:
        raise LeaseLost(f"job {job_id} is no longer held by backend {body.backend_id!r} (it is {row.status}"
                        f"{', held by another backend' if row.status == 'started' else ''}); its result is not recorded",
                        job_id=job_id)
    values: dict[str, Any] = {"status": body.status, "finished_at": time.time(), "lease_expires_at": None}
    if body.status == "finished":
        if body.result_uri is not None:
            try:
                sha1 = parse_sha1_uri(body.result_uri).sha1
            except KacheryError as e:
                raise InvalidInput(str(e), field="result_uri") from None
            in_project = conn.execute(select(tables.files.c.sha1).where(
                tables.files.c.project_id == project_id, tables.files.c.sha1 == sha1)).first()
            if in_project is None:
                raise InvalidInput(f"result_uri {body.result_uri} is not a file of project {project_id!r}; "
                                   "store the result in the project first", field="result_uri")
            values["result_uri"] = body.result_uri
        else:
            values["result"] = _canonical(body.result, "result", _constants.MAX_TASK_RESULT_INLINE_BYTES)
    elif body.status == "error":
        err = body.error or {}
        trace = err.get("traceback")
        values["error"] = _canonical({"type": str(err.get("type") or "Exception")[:200],
                                      "message": str(err.get("message") or "")[:100_000],
                                      "traceback": None if trace is None else str(trace)[:200_000]},
                                     "error", 1_000_000)
    sets = ", ".join(f"{name} = :{name}" for name in values)
    held = tables.fetch_one(conn, (
        f"UPDATE task_jobs SET {sets}, version = version + 1 WHERE project_id = :p AND job_id = :j "
        "AND status = 'started' AND backend_id = :b RETURNING *"),
        {**values, "p": project_id, "j": job_id, "b": body.backend_id})
    if held is None:  # lapsed and handed on between the read and this write (PostgreSQL)
        raise LeaseLost(f"job {job_id} is no longer held by backend {body.backend_id!r}; its result is not recorded",
                        job_id=job_id)
    version = int(held.version)
    hub.wakeups.publish(conn, job_channel(project_id, job_id), version)
    if not body.claim_next:
        return held, None, []
    answer, changed, _, _ = _claim(conn, who, hub, project_id, body.backend_id,
                                Claim(max_jobs=body.claim_next, wait=0, running=body.running))
    return held, answer, changed


# ---------------------------------------------------------------- endpoints

_P = "/api/projects/{project_id}/tasks"


@router.post(_P + "/requests",
             summary="Request a task: its job record (a finished calculation carries its result); with `wait`, "
                     "answered once the job ended or after `wait` seconds")
async def post_request(project_id: str, request: Request, wait: float = Query(default=0, ge=0, le=MAX_CLAIM_WAIT),
                       req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    require_json(request)
    return await request_job(req, project_id, request._body, wait)


async def request_job(req: SignedRequest, project_id: str, raw: bytes, wait: float) -> dict[str, Any]:
    """``POST .../requests``, over HTTP or a session."""
    hub = req.hub
    record = await _requesting(req, _request, project_id, raw)
    member = record.pop("_member")
    if record["status"] == "pending":
        hub.wakeups.notify(queue_channel(project_id), 0)
    hub.wakeups.notify(job_channel(project_id, record["job_id"]), record["version"])
    return await _until_end(hub, project_id, record, member, wait, record.pop("_caller"))


async def _requesting(req: SignedRequest, work: Any, project_id: str, raw: bytes) -> dict[str, Any]:
    """``work`` (a request's transaction), then the claims it handed jobs to get them (or, had it failed, not)."""
    taken: list[Waiter] = []
    committed = False
    try:
        answer: dict[str, Any] = await req.run(work, req.hub, project_id, raw, taken)
        committed = True
    finally:
        for waiter in taken:
            _settle(req.hub, project_id, waiter, committed)
    return answer


async def request_jobs(req: SignedRequest, project_id: str, raw: bytes) -> dict[str, Any]:
    """``POST .../requests/batch``, over HTTP or a session."""
    hub = req.hub
    answer = await _requesting(req, _request_batch, project_id, raw)
    if any(job["status"] == "pending" for job in answer["jobs"]):
        hub.wakeups.notify(queue_channel(project_id), 0)
    for job in answer["jobs"]:
        hub.wakeups.notify(job_channel(project_id, job["job_id"]), job["version"])
    return answer


async def wait_jobs(req: SignedRequest, project_id: str, raw: bytes) -> dict[str, Any]:
    """``POST .../jobs/wait``, over HTTP or a session: the jobs once all ended, or after ``wait`` seconds."""
    body = json_object_body(raw)
    ids, wait = body.get("job_ids"), body.get("wait", 0)
    if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_BATCH
            or not all(isinstance(j, str) and JOB_ID_RE.fullmatch(j) for j in ids)):
        raise InvalidInput(f"job_ids must be a list of 1 to {MAX_BATCH} job ids", field="job_ids")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_CLAIM_WAIT:
        raise InvalidInput(f"wait must be seconds from 0 to {MAX_CLAIM_WAIT:g}", field="wait")
    hub = req.hub
    deadline = time.monotonic() + float(wait)
    who, (rows, member, emails) = await req.run(_who_and, _jobs_rows, project_id, ids)
    open_ids = [j for j in dict.fromkeys(ids) if rows[j].status not in TERMINAL]
    waiting = set(open_ids)
    soonest: float | None = None
    with hub.wakeups.subscribe(*[job_channel(project_id, j) for j in open_ids]) as sub:
        reread = True  # once subscribed: an end between the first read and the subscription is not missed
        while waiting:
            if reread:
                fresh, _, more = await in_thread(hub.db.run, _jobs_rows, who, project_id, list(waiting))
                emails.update(more)
                rows.update(fresh)
                if any(_lapsed({"status": r.status, "lease_expires_at": r.lease_expires_at}) for r in fresh.values()):
                    await settle(hub, project_id)
                    continue
                waiting = {j for j in waiting if rows[j].status not in TERMINAL}
                soonest = min((rows[j].lease_expires_at for j in waiting
                               if rows[j].status == "started" and rows[j].lease_expires_at), default=None)
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            woke = await sub.wait(left if soonest is None else max(0.0, min(left, soonest - time.time() + 0.05)))
            # Ends here come with their rows and starts with a note: no read. Anything else (a lapse, a
            # wake-up from another hub process, a lease that may have lapsed) is read, at most 20 times a second.
            pages, bare = sub.take()
            for page in pages:
                if page.status in TERMINAL and page.job_id in waiting:
                    rows[page.job_id] = page
                    waiting.discard(page.job_id)
            reread = not woke or bare >= 0
            if reread:
                await asyncio.sleep(0.05)
    budget = MAX_WAIT_RESULTS_BYTES
    jobs = []
    for j in ids:
        row = rows[j]
        size = len(row.result or "")
        jobs.append(job_record(None, row, member=member, caller=who, with_result=size <= budget, emails=emails))
        budget -= size if size <= budget else 0
    return {"jobs": jobs}


def _jobs_rows(conn: Connection, who: Caller, project_id: str, ids: list[str],
               ) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """The jobs by id (404 for one the project does not have), whether the caller is a member, and
    for a member the requesters' emails (by ``"user:" + user id``, as job_record takes them)."""
    require_role(conn, who, project_id, "read")
    unique = list(dict.fromkeys(ids))
    rows: dict[str, Any] = {}
    for start in range(0, len(unique), 500):
        names, named = _listed("j", unique[start:start + 500])
        found = tables.fetch_all(conn, f"SELECT * FROM task_jobs WHERE project_id = :p AND job_id IN ({names})",
                                 {"p": project_id, **named})
        rows.update((r.job_id, r) for r in found)
    missing = [j for j in unique if j not in rows]
    if missing:
        raise JobNotFound(f"project {project_id!r} has no job {missing[0]!r}", job_id=missing[0])
    member = _is_member(conn, who, project_id)
    emails: dict[str, Any] = {}
    if member:
        for user_id in {r.requested_by for r in rows.values()} - {None, who.user_id}:
            emails["user:" + user_id] = _email(conn, user_id)
    return rows, member, emails


async def _until_end(hub: HubState, project_id: str, record: dict[str, Any], member: bool, wait: float,
                     who: Caller) -> dict[str, Any]:
    """``record`` once its job ended, or as it is after ``wait`` seconds: one round trip for a quick task."""
    if not wait or record["status"] in TERMINAL:
        return record
    # Read again once subscribed, so an end between the caller's read and the subscription is not missed.
    deadline = time.monotonic() + wait
    job_id = record["job_id"]
    with hub.wakeups.subscribe(job_channel(project_id, job_id)) as sub:
        while True:
            record = await in_thread(_reread, hub, project_id, job_id, member)
            if _lapsed(record):
                await settle(hub, project_id)
                continue
            left = deadline - time.monotonic()
            if record["status"] in TERMINAL or left <= 0:
                return record
            await sub.wait(_until_lapse(record, left))
            ended = _ended_here(sub, member, who)
            if ended is not None:
                return ended


def _ended_here(sub: Subscription, member: bool, who: Caller) -> dict[str, Any] | None:
    """The job's record from the row its completion in this process woke ``sub`` with, when that row
    ended it and says all the caller may see (no other requester's email to look up); else None."""
    pages, _ = sub.take()
    row = pages[-1] if pages else None
    if row is None or row.status not in TERMINAL:
        return None
    if member and not (who.user_id is not None and row.requested_by == who.user_id):
        return None
    return job_record(None, row, member=member, caller=who)


@router.post(_P + "/requests/batch",
             summary=f"Request one task for many inputs (at most {MAX_BATCH}): their jobs, in order, as one request "
                     "each would give")
async def post_requests(project_id: str, request: Request, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    require_json(request)
    return await request_jobs(req, project_id, request._body)


@router.post(_P + "/jobs/wait",
             summary=f"Wait for jobs (at most {MAX_BATCH}): their records once all ended, or after `wait` seconds")
async def post_wait(project_id: str, request: Request, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    require_json(request)
    return await wait_jobs(req, project_id, request._body)


@router.get(_P + "/jobs", summary="Recent jobs of a project (results left out)")
async def get_jobs(project_id: str, limit: int = Query(default=100, ge=1, le=1000),
                   status: Literal["pending", "started", "finished", "error", "cancelled"] | None = Query(default=None),
                   req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    who, jobs = await req.run(_who_and, _list_jobs, project_id, limit, status)
    if any(_lapsed(job) for job in jobs):
        await settle(req.hub, project_id)
        jobs = await run_in_threadpool(req.hub.db.run, _list_jobs, who, project_id, limit, status)
    return {"jobs": jobs}


@router.get(_P + "/jobs/{job_id}", summary="A job: status, progress, error, result; with `wait`, answered once "
                                            "the job ended or after `wait` seconds")
async def get_job(project_id: str, job_id: str, wait: float = Query(default=0, ge=0, le=MAX_CLAIM_WAIT),
                  req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await read_job(req, project_id, job_id, wait)


async def read_job(req: SignedRequest, project_id: str, job_id: str, wait: float) -> dict[str, Any]:
    """``GET .../jobs/{job_id}``, over HTTP or a session."""
    job_id = _check(JOB_ID_RE, job_id, "job id")
    who, (record, member) = await req.run(_who_and, _get_job_member, project_id, job_id)
    if _lapsed(record):
        await settle(req.hub, project_id)
        record, member = await run_in_threadpool(req.hub.db.run, _get_job_member, who, project_id, job_id)
    return await _until_end(req.hub, project_id, record, member, wait, who)


def _get_job_member(conn: Connection, who: Caller, project_id: str, job_id: str) -> tuple[dict[str, Any], bool]:
    record = _get_job(conn, who, project_id, job_id)
    return dict(record), _is_member(conn, who, project_id)


def _who_and(conn: Connection, who: Caller, work: Any, *args: Any) -> tuple[Caller, Any]:
    return who, work(conn, who, *args)


@router.post(_P + "/jobs/{job_id}/cancel", summary="Cancel a job (its requester, or a writer)")
async def post_cancel(project_id: str, job_id: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    record: dict[str, Any] = await req.run(_cancel, req.hub, project_id, _check(JOB_ID_RE, job_id, "job id"))
    req.hub.wakeups.notify(queue_channel(project_id), 0)
    req.hub.wakeups.notify(job_channel(project_id, job_id), record["version"])
    return record


@router.get(_P + "/jobs/{job_id}/events", response_class=StreamingResponse,
            summary="Follow a job (Server-Sent Events): `event: job` with its record at once and at each change",
            responses={200: {"content": {"text/event-stream": {}}}})
async def get_job_events(project_id: str, job_id: str, request: Request,
                         wait: float | None = Query(default=None, gt=0, le=86400),
                         req: SignedRequest = Depends(signed_request)) -> StreamingResponse:
    job_id = _check(JOB_ID_RE, job_id, "job id")
    who = await req.run(_open_job, project_id, job_id)  # refused or unknown: an error answer, not a stream
    hub = req.hub
    return event_stream(hub, request, lambda slot: _job_events(hub, who, project_id, job_id, wait, slot))


def _open_job(conn: Connection, who: Caller, project_id: str, job_id: str) -> Caller:
    _get_job(conn, who, project_id, job_id)
    return who


async def _job_events(hub: HubState, who: Caller, project_id: str, job_id: str, wait: float | None,
                      slot: StreamSlot) -> AsyncIterator[bytes]:
    keepalive = hub.settings.feed_keepalive_seconds
    deadline = None if wait is None else time.monotonic() + wait

    def read() -> dict[str, Any] | HubError:
        try:
            with hub.db.read() as conn:
                return _get_job(conn, who, project_id, job_id)
        except HubError as e:  # access lost
            return e

    try:
        with hub.wakeups.subscribe(job_channel(project_id, job_id)) as sub:
            version = -1
            # Read again once subscribed: a change between the first read and the subscription is not lost.
            current: dict[str, Any] | HubError = await run_in_threadpool(read)
            while True:
                if isinstance(current, HubError):
                    yield event("end", json.dumps({"reason": "refused", **current.payload()["error"]}))
                    return
                if current["version"] != version:
                    version = current["version"]
                    yield event("job", json.dumps(current), version)
                    if current["status"] in TERMINAL:
                        return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    yield event("end", '{"reason":"wait"}')
                    return
                if not await sub.wait(_until_lapse(current, keepalive if left is None else min(keepalive, left))):
                    yield b": keep-alive\n\n"
                sub.take()  # the rows a completion here came with: this stream reads the job itself
                current = await run_in_threadpool(read)
                if not isinstance(current, HubError) and _lapsed(current):
                    await settle(hub, project_id)
                    current = await run_in_threadpool(read)
    finally:
        slot.release()


@router.get(_P + "/backends", summary="Backends seen within two leases, with the handlers they serve")
async def get_backends(project_id: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return {"backends": await req.run(_list_backends, req.hub, project_id)}


@router.put(_P + "/backends/{backend_id}", summary="Register a backend and its handlers, or update them (needs write)")
async def put_backend(project_id: str, backend_id: str, body: RegisterBackend,
                      req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    result: dict[str, Any] = await req.run(_register, req.hub, project_id, _check(BACKEND_ID_RE, backend_id, "backend_id"), body)
    req.hub.wakeups.notify(queue_channel(project_id), 0)
    return result


@router.delete(_P + "/backends/{backend_id}", summary="A backend stops: its running jobs go back to the queue")
async def delete_backend(project_id: str, backend_id: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    result: dict[str, Any] = await req.run(_unregister, req.hub, project_id, _check(BACKEND_ID_RE, backend_id, "backend_id"))
    req.hub.wakeups.notify(queue_channel(project_id), 0)
    return result


@router.post(_P + "/backends/{backend_id}/claim",
             summary="Renew the backend's leases, report progress, learn of cancels, and claim pending jobs "
                     "(long-polls up to `wait` seconds)")
async def post_claim(project_id: str, backend_id: str, body: Claim,
                     req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await claim_jobs(req, project_id, backend_id, body)


async def claim_jobs(req: SignedRequest, project_id: str, backend_id: str, body: Claim) -> dict[str, Any]:
    """``POST .../backends/{backend_id}/claim``, over HTTP or a session."""
    backend_id = _check(BACKEND_ID_RE, backend_id, "backend_id")
    hub = req.hub
    deadline = time.monotonic() + body.wait
    # The first pass runs in the request's own transaction (its nonce); later passes after a wake-up.
    with hub.wakeups.subscribe(queue_channel(project_id)) as sub:
        who, (answer, changed, next_lapse, keys) = await req.run(_first_claim, hub, project_id, backend_id, body)
        while True:
            taken = {job["job_id"] for job in answer["jobs"]}
            for job_id, version in changed:
                hub.wakeups.notify(job_channel(project_id, job_id), version,
                                   Started(job_id) if job_id in taken else None)
            if answer["jobs"] or answer["cancel"]:
                return answer
            left = deadline - time.monotonic()
            if next_lapse is not None:
                left = min(left, next_lapse - time.time() + 0.05)
            if left <= 0 and deadline - time.monotonic() <= 0:
                return answer
            if left > 0:
                job = await _wait_for_job(hub, project_id, backend_id, who, keys if body.max_jobs else set(), sub, left)
                if job is not None:
                    handed = {"jobs": [job], "cancel": [], "lease_seconds": hub.settings.task_lease_seconds}
                    part = PARTIAL.get() if body.stream else None
                    if part is None or body.max_jobs <= 1:
                        return handed
                    # On a session: the job goes now and the claim waits on for the next, with one slot fewer
                    # (no new claim, and no claim pass, between two requests the backend serves).
                    await part(handed)
                    body = body.model_copy(update={"max_jobs": body.max_jobs - 1})
                    changed = []  # (told already)
                    if sub.take()[1] < 0:  # no job was queued meanwhile (a batch's others): wait on
                        continue
                    # else: a pass takes what was queued
            else:
                await asyncio.sleep(0)
            body = body.model_copy(update={"progress": {}})
            answer, changed, next_lapse, keys = await in_thread(hub.db.run, _claim, who, hub, project_id, backend_id,
                                                                body)


async def _wait_for_job(hub: HubState, project_id: str, backend_id: str, who: Caller, keys: set[str],
                        sub: Subscription, seconds: float) -> dict[str, Any] | None:
    """Wait for the queue's wake-up, offering the claim to requests made here (see _handoff): the job a
    request handed over, or None (woken, or the time is up: the claim runs a pass)."""
    if not keys:
        await sub.wait(seconds)
        return None
    waiter = Waiter(backend_id, who.client_id, who.user_id, keys, sub.poke)
    hub.task_waiters.add(project_id, waiter)
    try:
        sub.take()  # forget wake-ups the last pass saw (one that came since still ends the wait at once)
        await sub.wait(seconds)
        if hub.task_waiters.withdraw(project_id, waiter):
            return None
        # (a wake-up of the queue that came with it stays in `sub` for the caller: see claim_jobs)
        # A request took it: its job is ready once that request's transaction ends (moments).
        await asyncio.wait_for(waiter.settled.wait(), 60)
        return waiter.job
    finally:
        waiter.gone = True
        hub.task_waiters.withdraw(project_id, waiter)


def _first_claim(conn: Connection, who: Caller, hub: HubState, project_id: str, backend_id: str, body: Claim,
                 ) -> tuple[Caller, tuple[dict[str, Any], list[tuple[str, int]], float | None, set[str]]]:
    return who, _claim(conn, who, hub, project_id, backend_id, body)


@router.post(_P + "/jobs/{job_id}/complete", summary="A backend reports a job's end: finished (result), error or cancelled")
async def post_complete(project_id: str, job_id: str, request: Request,
                        req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    require_json(request)
    return await complete_job(req, project_id, job_id, request._body)


async def complete_job(req: SignedRequest, project_id: str, job_id: str, raw: bytes) -> dict[str, Any]:
    """``POST .../jobs/{job_id}/complete``, over HTTP or a session."""
    job_id = _check(JOB_ID_RE, job_id, "job id")
    row, claimed, changed = await req.run(_complete, req.hub, project_id, job_id, raw)
    version = int(row.version)
    req.hub.wakeups.notify(job_channel(project_id, job_id), version, row)
    for other, other_version in changed:
        req.hub.wakeups.notify(job_channel(project_id, other), other_version)
    return {"job_id": job_id, "version": version, **(claimed or {})}
