"""Tasks between processes: real ``kachery-hub serve`` processes, backends and requesters in processes of their own.

Each backend and requester (``tests/task_worker.py``) has its own kachery
directory and signs in with a token, as another computer would. Handlers log
each run to a file, so runs are counted across processes. The hub runs with a
short lease (``KACHERY_HUB_TASK_LEASE``) so that a SIGKILLed backend's job comes
back soon. The database matters (leases, claims, wake-ups across hub
processes), so the tests run on the embedded SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from hub_fixtures import _fresh_postgres_database, postgres_server  # noqa: E402,F401
from hub_process import HubProcess, free_port, running  # noqa: E402
from kachery_core import _hub  # noqa: E402
from task_worker import Worker, h_arrays, plain, runs  # noqa: E402

pytestmark = pytest.mark.slow

ALICE, BOB, CAROL, DAVE = "alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"
#: The hub's task lease here (seconds): a dead backend's job is claimed again after about this long.
LEASE = 5.0  # renewed every third of it: a loaded machine keeps a running job
TERMINAL = ("finished", "error", "cancelled")


def _database_args(kind: str, request: pytest.FixtureRequest) -> list[str]:
    if kind == "postgresql":
        return ["--database", _fresh_postgres_database(request.getfixturevalue("postgres_server"))]
    return []


@dataclass
class Lab:
    """A hub, alice signed in here (her default project), and the worker processes a test started."""

    hub: HubProcess
    root: Path
    project: str
    tokens: dict[str, str]
    runs_file: Path
    workers: list[Worker] = field(default_factory=list)

    def token(self, who: str) -> str:
        if who not in self.tokens:
            self.tokens[who] = self.hub.token(who)
        return self.tokens[who]

    def _common(self, who: str | None, project: str | None, hub: HubProcess | None) -> list[str]:
        return ["--hub", (hub or self.hub).url, *(["--token", self.token(who)] if who else []),
                "--project", project or self.project]

    def backend(self, name: str, *, who: str = ALICE, project: str | None = None, hub: HubProcess | None = None,
                wait: bool = True, claims: Path | None = None) -> Worker:
        w = Worker(self.root, name, "backend", *self._common(who, project, hub), "--runs", str(self.runs_file),
                   "--name", name, *(["--claims", str(claims)] if claims else []))
        self.workers.append(w)
        if wait:
            w.wait_event("ready")
        return w

    def request(self, name: str, task_name: str, task_input: dict[str, Any], *, task_type: str = "calculation",
                who: str | None = ALICE, project: str | None = None, timeout: float = 300.0, progress: bool = False,
                hub: HubProcess | None = None) -> Worker:
        w = Worker(self.root, name, "request", *self._common(who, project, hub), "--type", task_type,
                   "--name", task_name, "--input", json.dumps(task_input), "--timeout", str(timeout),
                   *(["--progress"] if progress else []), ephemeral=who is None)
        self.workers.append(w)
        return w

    def submit(self, name: str, task_name: str, task_input: dict[str, Any], *, who: str = ALICE,
               cancel_when: Path | None = None, timeout: float = 300.0, hub: HubProcess | None = None) -> Worker:
        w = Worker(self.root, name, "submit", *self._common(who, None, hub), "--name", task_name,
                   "--input", json.dumps(task_input), "--timeout", str(timeout),
                   *(["--cancel-when", str(cancel_when)] if cancel_when else []))
        self.workers.append(w)
        return w

    def probe(self, name: str, *steps: str, who: str | None, project: str | None = None) -> dict[str, dict[str, Any]]:
        w = Worker(self.root, name, "probe", *self._common(who, project, None), *steps, ephemeral=who is None)
        self.workers.append(w)
        w.finish(timeout=300)
        assert not w.of("error"), f"probe {name}: {w.of('error')}; stderr {w.stderr()[-3000:]!r}"
        return {e["name"]: e for e in w.of("step")}

    def job(self, job_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The job record as alice reads it from the hub (None: the hub has no such job)."""
        try:
            record = _hub.connect().json("GET", f"/api/projects/{project or self.project}/tasks/jobs/{job_id}")
        except kc.HubNotFoundError:
            return None
        assert isinstance(record, dict), record
        return record

    def runs(self, task: str | None = None, what: str | None = "start") -> list[dict[str, Any]]:
        return [r for r in runs(self.runs_file)
                if (task is None or r["task"] == task) and (what is None or r["what"] == what)]

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached in {timeout} s; runs {runs(self.runs_file)[-5:]}; "
                                     f"workers {[(w.name, w.events[-3:]) for w in self.workers]}")
            time.sleep(0.05)

    def kill_all(self) -> None:
        for w in self.workers:
            w.kill()


def _lab(hub: HubProcess, root: Path) -> Lab:
    token = hub.token(ALICE)
    project = kc.init(hub_url=hub.url, token=token)["default_project_id"]
    return Lab(hub=hub, root=root, project=str(project), tokens={ALICE: token}, runs_file=root / "runs.jsonl")


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A real hub with a short task lease, on each database in turn."""
    hub = HubProcess(tmp_path / "hub-data", free_port(), *_database_args(request.param, request))
    with running(hub, env={"KACHERY_HUB_TASK_LEASE": str(LEASE)}):
        lab = _lab(hub, tmp_path)
        try:
            yield lab
        finally:
            lab.kill_all()


def _failed(worker: Worker, timeout: float = 300.0) -> dict[str, Any]:
    """The error a requester's call raised (failing if it returned a value)."""
    e = worker.outcome(timeout)
    assert e["event"] == "failed", f"worker {worker.name} got {e}"
    return dict(e["error"])


# ---------------------------------------------------------------- reliability


def test_a_sigkilled_backends_job_is_finished_by_a_second_backend(lab: Lab) -> None:
    gate = lab.root / "gate"  # the handler waits for it: backend A is killed mid-task
    task_input = {"x": 1, "gate": str(gate)}
    job_id = kc.task_job_id("t.count", task_input)
    a = lab.backend("backend-a")
    requester = lab.request("requester", "t.count", task_input)
    lab.until(lambda: lab.runs("t.count"), "backend A started the job")
    record = lab.job(job_id)
    assert record is not None and record["status"] == "started", record
    assert record["backend_id"] == a.of("ready")[0]["backend_id"]
    a.kill()
    gate.touch()
    b = lab.backend("backend-b")
    value = requester.result()
    assert value == {"x": 1, "worker": "backend-b", "pid": b.of("ready")[0]["pid"]}
    assert [r["worker"] for r in lab.runs("t.count")] == ["backend-a", "backend-b"]
    assert [r["worker"] for r in lab.runs("t.count", "end")] == ["backend-b"]
    record = lab.job(job_id)
    assert record is not None
    assert record["status"] == "finished" and record["attempts"] == 2, record
    assert record["backend_id"] == b.of("ready")[0]["backend_id"]
    assert record["result"] == value


def test_a_cached_calculation_is_answered_with_no_backend_running(lab: Lab) -> None:
    kc.set_project_member(lab.project, BOB, "read")
    a = lab.backend("backend")
    first = lab.request("alice", "t.count", {"x": 2}).result()
    assert first["worker"] == "backend"
    events = a.interrupt()  # Ctrl-C: run() returns
    assert [e["event"] for e in events if e["event"] in ("stopped", "error")] == ["stopped"], events[-3:]
    assert not [b for b in kc.list_task_backends(project_id=lab.project) if b["backend_id"] == a.of("ready")[0]["backend_id"]]
    # No backend anywhere: another user, another computer, a short timeout; answered from the hub's cache.
    assert lab.request("bob", "t.count", {"x": 2}, who=BOB, timeout=10).result() == first
    assert lab.request("alice-again", "t.count", {"x": 2.0}, timeout=10).result() == first  # 2.0 is 2: one job
    assert len(lab.runs("t.count")) == 1
    record = lab.job(kc.task_job_id("t.count", {"x": 2}))
    assert record is not None and record["status"] == "finished" and record["attempts"] == 1, record


def test_an_action_runs_each_time_it_is_requested(lab: Lab) -> None:
    lab.backend("backend")
    for i in range(2):
        w = lab.request(f"requester-{i}", "t.action", {"x": 5}, task_type="action")
        assert w.outcome()["event"] == "result" and w.result() is None
    assert [r["x"] for r in lab.runs("t.action")] == [5, 5]
    jobs = [j for j in kc.list_task_jobs(project_id=lab.project) if j["task_name"] == "t.action"]
    assert len(jobs) == 2 and len({j["job_id"] for j in jobs}) == 2, jobs
    assert {j["status"] for j in jobs} == {"finished"} and {j["task_type"] for j in jobs} == {"action"}
    assert kc.task_job_id("t.action", {"x": 5}) not in {j["job_id"] for j in jobs}


def test_concurrent_requests_of_one_calculation_run_it_once(lab: Lab) -> None:
    kc.set_project_member(lab.project, BOB, "read")
    gate = lab.root / "gate"
    task_input = {"x": 7, "gate": str(gate)}
    job_id = kc.task_job_id("t.count", task_input)
    # Two requests while no backend is online: one pending job.
    first = [lab.submit("pending-1", "t.count", task_input), lab.submit("pending-2", "t.count", task_input, who=BOB)]
    for w in first:
        assert w.wait_event("submitted")["job_id"] == job_id
    lab.backend("backend")
    lab.until(lambda: lab.runs("t.count"), "the job started")
    # A third request while it runs joins it.
    joining = lab.submit("joining", "t.count", task_input, who=BOB)
    submitted = joining.wait_event("submitted")
    assert submitted["job_id"] == job_id and submitted["status"] == "started", submitted
    gate.touch()
    values = [w.result() for w in [*first, joining]]
    assert values[0]["worker"] == "backend" and values == [values[0]] * 3
    assert len(lab.runs("t.count")) == 1, lab.runs("t.count")


def test_a_handler_that_raises_gives_the_requester_a_task_error(lab: Lab) -> None:
    lab.backend("backend")
    job_id = kc.task_job_id("t.fail", {"x": 4})
    error = _failed(lab.request("requester", "t.fail", {"x": 4}))
    assert error["type"] == "TaskError" and "KacheryError" in error["bases"], error
    assert error["remote_type"] == "ValueError"
    assert error["remote_message"] == "cannot use x=4: it is not a prime"
    tb = error["remote_traceback"]
    assert "Traceback" in tb and "h_fail" in tb and "_deep_failure" in tb and "raise ValueError" in tb, tb
    assert error["job_id"] == job_id
    assert "ValueError" in error["message"] and "cannot use x=4" in error["message"], error["message"]
    record = lab.job(job_id)
    assert record is not None and record["status"] == "error", record
    assert record["error"]["type"] == "ValueError" and "_deep_failure" in record["error"]["traceback"]
    # An errored calculation is not a cached answer: requested again, it runs again.
    again = _failed(lab.request("requester-2", "t.fail", {"x": 4}))
    assert again["remote_message"] == error["remote_message"]
    assert len(lab.runs("t.fail")) == 2


def test_a_request_with_no_backend_times_out_clearly_and_leaves_nothing_running(lab: Lab) -> None:
    job_id = kc.task_job_id("t.count", {"x": 11})
    error = _failed(lab.request("requester", "t.count", {"x": 11}, timeout=2))
    assert error["type"] == "TaskTimeoutError" and "TimeoutError" in error["bases"], error
    assert "t.count" in error["message"] and re.search(r"no backend", error["message"], re.I), error["message"]
    record = lab.job(job_id)
    assert record is None or record["status"] not in ("pending", "started"), record
    assert not [j for j in kc.list_task_jobs(project_id=lab.project) if j["status"] in ("pending", "started")]
    # A backend that comes later does not run it; it serves what is asked now.
    backend = lab.backend("backend")
    assert lab.request("later", "t.count", {"x": 12}).result()["x"] == 12
    backend.interrupt()  # waits for anything it was running
    assert [r["x"] for r in lab.runs("t.count")] == [12]


def test_cancel_a_pending_job_and_a_running_one(lab: Lab) -> None:
    # Pending (no backend yet): cancelled at once.
    go = lab.root / "cancel-pending"
    go.touch()
    pending = lab.submit("pending", "t.count", {"x": 21}, cancel_when=go)
    error = _failed(pending)
    assert error["type"] == "TaskCancelledError", error
    record = lab.job(kc.task_job_id("t.count", {"x": 21}))
    assert record is not None and record["status"] == "cancelled" and record["cancel_requested"], record
    # Running: the handler is told (task_cancel_requested()), and the job ends as cancelled.
    backend = lab.backend("backend")
    go = lab.root / "cancel-running"
    running_job = lab.submit("running", "t.cancellable", {"x": 22}, cancel_when=go)
    lab.until(lambda: lab.runs("t.cancellable"), "the job started")
    go.touch()
    error = _failed(running_job)
    assert error["type"] == "TaskCancelledError", error
    lab.until(lambda: lab.runs("t.cancellable", "cancel seen"), "the handler saw the cancel")
    record = lab.job(kc.task_job_id("t.cancellable", {"x": 22}))
    assert record is not None and record["status"] == "cancelled", record
    assert record.get("result") is None
    # A cancelled calculation requested again runs again; the backend still serves.
    assert lab.request("again", "t.count", {"x": 21}).result()["x"] == 21
    backend.interrupt()
    assert not lab.runs("t.cancellable", "end")
    assert [r["x"] for r in lab.runs("t.count")] == [21]


def test_a_cancel_the_handler_ignores_does_not_make_its_backend_hammer_the_hub(lab: Lab) -> None:
    claims = lab.root / "claims"
    gate, go = lab.root / "gate", lab.root / "cancel"
    task_input = {"x": 24, "gate": str(gate)}
    lab.backend("backend", claims=claims)
    requester = lab.submit("requester", "t.stubborn", task_input, cancel_when=go)
    lab.until(lambda: lab.runs("t.stubborn"), "the job started")

    def claims_in(seconds: float) -> int:
        before = int(claims.read_text())
        time.sleep(seconds)
        return int(claims.read_text()) - before

    window = 2 * LEASE
    # A backend long-polls: a claim about every third of a lease while a job runs.
    assert claims_in(window) <= 10
    go.touch()
    lab.until(lambda: (lab.job(kc.task_job_id("t.stubborn", task_input)) or {}).get("cancel_requested"),
              "the cancel was recorded")
    time.sleep(0.5)  # the backend heard it
    # The handler goes on (it never asks); the backend must not ask the hub again and again meanwhile.
    sent = claims_in(window)
    assert sent <= 10, f"{sent} claim requests in {window:g} s while a cancelled job's handler went on"
    gate.touch()
    assert _failed(requester)["type"] == "TaskCancelledError"
    record = lab.job(kc.task_job_id("t.stubborn", task_input))
    assert record is not None and record["status"] == "cancelled", record


def test_progress_reaches_the_requester_while_the_task_runs(lab: Lab) -> None:
    gate = lab.root / "gate"
    task_input = {"x": 3, "gate": str(gate)}
    lab.backend("backend")
    requester = lab.request("requester", "t.progress", task_input, progress=True)
    requester.wait_for(lambda events: any("a quarter done" in json.dumps(e) for e in events if e["event"] == "progress"),
                       what="the handler's progress")
    assert not requester.of("result")
    seen = next(e for e in requester.of("progress") if "a quarter done" in json.dumps(e))
    assert "0.25" in json.dumps(seen), seen
    record = lab.job(kc.task_job_id("t.progress", task_input))
    assert record is not None and record["status"] == "started", record
    assert record["progress"]["fraction"] == 0.25 and record["progress"]["message"] == "a quarter done", record
    gate.touch()
    assert requester.result() == {"x": 3}


def test_results_with_numpy_arrays_and_nested_json_reach_every_requester(lab: Lab) -> None:
    import numpy as np

    kc.set_project_member(lab.project, BOB, "read")
    lab.backend("backend")
    expected = plain(h_arrays(2, os.devnull, "here"))
    assert lab.request("requester", "t.arrays", {"x": 2}).result() == expected
    assert lab.request("bob", "t.arrays", {"x": 2}, who=BOB).result() == expected  # the cached one
    # And in this process, as arrays of the same dtype and shape.
    value = kc.request_task(task_type="calculation", task_name="t.arrays", task_input={"x": 2}, timeout_sec=60,
                            project_id=lab.project)
    assert isinstance(value["matrix"], np.ndarray) and value["matrix"].dtype == np.float32
    np.testing.assert_array_equal(value["matrix"], np.arange(12, dtype=np.float32).reshape(3, 4) * 2)
    assert value["nested"]["deep"]["empty"].shape == (0, 3) and value["complex"].dtype == np.complex128
    assert len(lab.runs("t.arrays")) == 1


def _hub_blob(hub: HubProcess, sha1: str) -> Path:
    found = [p for p in hub.data.rglob(sha1) if p.is_file()]
    assert len(found) == 1, found
    return found[0]


def test_a_result_over_one_mib_comes_back_through_a_verified_file(lab: Lab) -> None:
    n = 200_000
    backend = lab.backend("backend")
    value = lab.request("requester", "t.big", {"n": n}).result()
    import numpy as np

    values = np.arange(n, dtype=np.float64) / 3.0
    assert value["values"]["__ndarray__"] == {"dtype": "float64", "shape": [n],
                                              "sha1": plain(values)["__ndarray__"]["sha1"]}
    assert value["text"] == "abc" * n and value["n"] == n
    record = lab.job(kc.task_job_id("t.big", {"n": n}))
    assert record is not None and record["status"] == "finished", record
    assert record.get("result") is None and str(record["result_uri"]).startswith("sha1://"), \
        {k: v for k, v in record.items() if k != "result"}
    backend.interrupt()
    # Another computer gets it from the file (no backend online).
    assert lab.request("cached", "t.big", {"n": n}, timeout=30).result() == value
    # Bytes changed behind the hub's back are refused, not returned.
    blob = _hub_blob(lab.hub, str(record["result_uri"])[len("sha1://"):][:40])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    error = _failed(lab.request("after-tampering", "t.big", {"n": n}, timeout=30))
    assert "HashMismatchError" in error["bases"], error
    assert len(lab.runs("t.big")) == 1


def test_three_failed_attempts_end_as_an_error_saying_so(lab: Lab) -> None:
    never = lab.root / "never"
    task_input = {"x": 31, "gate": str(never)}
    job_id = kc.task_job_id("t.count", task_input)
    requester = lab.request("requester", "t.count", task_input, timeout=600)
    for attempt in (1, 2, 3):
        b = lab.backend(f"backend-{attempt}")
        lab.until(lambda n=attempt: len(lab.runs("t.count")) == n, f"attempt {attempt} started", timeout=LEASE * 4 + 120)
        b.kill()
    # No backend is online now: the third lease lapses all the same, and the job ends.
    deadline = time.monotonic() + LEASE * 4 + 60
    while (record := lab.job(job_id)) is not None and record["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.1)
    assert record is not None and record["status"] == "error", \
        f"the job of a third dead backend, {LEASE * 4 + 60:g} s after its lease: {record}"
    error = _failed(requester, timeout=60)
    assert error["type"] == "TaskError", error
    assert re.search(r"\b3 (attempts|times)\b", error["message"]), error["message"]
    record = lab.job(job_id)
    assert record is not None and record["status"] == "error" and record["attempts"] == 3, record
    assert re.search(r"\b3 (attempts|times)\b", record["error"]["message"]), record["error"]
    # It is over: a backend that comes now does not run it a fourth time.
    last = lab.backend("backend-4")
    assert lab.request("other", "t.count", {"x": 32}).result()["worker"] == "backend-4"
    last.interrupt()
    assert [r["worker"] for r in lab.runs("t.count") if r["x"] == 31] == ["backend-1", "backend-2", "backend-3"]


# ---------------------------------------------------------------- refusals


def test_bad_task_names_and_inputs_are_refused_with_typed_errors_and_nothing_is_queued(lab: Lab) -> None:
    names = ["", "has space", "../etc/passwd", "a/b", "x" * 201, "caf\u00e9", "name\n", "a;b", "%2e%2e"]
    for name in names:
        with pytest.raises(kc.InvalidTaskNameError) as info:
            kc.request_task(task_type="calculation", task_name=name, task_input={"x": 1}, timeout_sec=5,
                            project_id=lab.project)
        assert isinstance(info.value, ValueError)
    with pytest.raises(kc.InvalidTaskNameError):
        kc.submit_task(task_type="calculation", task_name="a b", task_input={"x": 1}, project_id=lab.project)
    inputs: list[tuple[Any, str]] = [
        ([1, 2], ""), ("text", ""), (None, ""), (5, ""),
        ({"a": float("nan")}, "a"), ({"a": [0, {"b": float("inf")}]}, "b"), ({"a": {1, 2}}, "a"),
        ({"a": object()}, "a"), ({"a": b"bytes"}, "a"), ({"s": "x" * (2**20)}, ""),
    ]
    for task_input, names_part in inputs:
        with pytest.raises(kc.TaskInputError) as info:
            kc.request_task(task_type="calculation", task_name="t.count", task_input=task_input, timeout_sec=5,
                            project_id=lab.project)
        assert isinstance(info.value, ValueError)
        assert names_part in str(info.value), (task_input if not isinstance(task_input, dict) else "", str(info.value))
    with pytest.raises(ValueError):
        kc.request_task(task_type="everything", task_name="t.count", task_input={"x": 1}, timeout_sec=5,
                        project_id=lab.project)
    # The same from a requester process.
    error = _failed(lab.request("bad-name", "../t.count", {"x": 1}, timeout=5))
    assert error["type"] == "InvalidTaskNameError" and "ValueError" in error["bases"], error
    nan = Worker(lab.root, "bad-input", "request", "--hub", lab.hub.url, "--token", lab.token(ALICE),
                 "--project", lab.project, "--name", "t.count", "--input", '{"x": NaN}', "--timeout", "5")
    lab.workers.append(nan)
    error = _failed(nan)
    assert error["type"] == "TaskInputError" and "x" in error["message"], error
    assert kc.list_task_jobs(project_id=lab.project) == []


def _same_refusal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert not a["ok"] and not b["ok"], (a, b)
    assert {k: a["error"][k] for k in ("type", "status", "code")} == {k: b["error"][k] for k in ("type", "status", "code")}


def test_who_may_register_handlers_and_request_tasks(lab: Lab) -> None:
    pa = lab.project
    kc.set_project_member(pa, BOB, "read")
    kc.set_project_member(pa, DAVE, "write")
    public = kc.create_project("open tasks")
    kc.set_project_public(public, True)
    lab.backend("backend")
    lab.backend("backend-public", project=public)
    assert lab.request("alice", "t.count", {"x": 1}).result()["x"] == 1
    assert lab.request("alice-public", "t.count", {"x": 1}, project=public).result()["x"] == 1
    before = len(lab.runs())

    # A read member: requests calculations (cached or new), reads jobs and backends; no actions, no handlers.
    bob = lab.probe("bob", 'calculation={"x": 1}', 'calculation={"x": 2}', 'action={"x": 1}', "register",
                    "list_jobs", "list_backends", who=BOB)
    assert bob['calculation={"x": 1}']["ok"] and bob['calculation={"x": 1}']["value"]["x"] == 1, bob
    assert bob['calculation={"x": 2}']["ok"] and bob['calculation={"x": 2}']["value"]["x"] == 2, bob
    for step in ('action={"x": 1}', "register"):
        assert not bob[step]["ok"] and "HubPermissionError" in bob[step]["error"]["bases"], bob[step]
        assert bob[step]["error"]["status"] == 403
    assert {j["job_id"] for j in bob["list_jobs"]["value"]} >= {kc.task_job_id("t.count", {"x": 1})}
    assert [b["handlers"] for b in bob["list_backends"]["value"]], bob["list_backends"]

    # A write member may request an action (the control for the refusal above).
    dave = lab.probe("dave", 'action={"x": 9}', who=DAVE)
    assert dave['action={"x": 9}']["ok"] and dave['action={"x": 9}']["value"] is None, dave

    # An outsider: refused everything, the same way for a cached job as for one never requested.
    carol = lab.probe("carol", 'calculation={"x": 1}', 'calculation={"x": 999}', 'action={"x": 1}', "register",
                      "list_jobs", "list_backends", who=CAROL)
    for step, answer in carol.items():
        assert not answer["ok"] and answer["error"]["status"] in (403, 404), (step, answer)
        assert "t.count" not in json.dumps(answer["error"]["message"]) or step.startswith("calculation"), answer
    _same_refusal(carol['calculation={"x": 1}'], carol['calculation={"x": 999}'])
    assert lab.job(kc.task_job_id("t.count", {"x": 999})) is None

    # A public-read project: a signed-in non-member requests calculations (cached or new), not actions.
    carol_public = lab.probe("carol-public", 'calculation={"x": 1}', 'calculation={"x": 3}', 'action={"x": 1}',
                             "register", "list_jobs", who=CAROL, project=public)
    assert carol_public['calculation={"x": 1}']["ok"] and carol_public['calculation={"x": 3}']["ok"], carol_public
    assert carol_public['calculation={"x": 3}']["value"]["worker"] == "backend-public"
    for step in ('action={"x": 1}', "register"):
        assert not carol_public[step]["ok"] and carol_public[step]["error"]["status"] == 403, carol_public[step]
    assert carol_public["list_jobs"]["ok"]
    # Anyone, not signed in (no key: a read-only client): the cached answer; asking for a new one, or an
    # action, or serving, is refused with an error that says why.
    anyone = lab.probe("anyone", 'calculation={"x": 1}', 'calculation={"x": 4}', 'action={"x": 1}', "register",
                       "list_jobs", who=None, project=public)
    assert anyone['calculation={"x": 1}']["ok"] and anyone['calculation={"x": 1}']["value"]["x"] == 1, anyone
    for step in ('calculation={"x": 4}', 'action={"x": 1}', "register"):
        assert not anyone[step]["ok"] and "HubAuthError" in anyone[step]["error"]["bases"], anyone[step]
        assert "ephemeral" in anyone[step]["error"]["message"].lower(), anyone[step]
    assert anyone["list_jobs"]["ok"]
    assert lab.job(kc.task_job_id("t.count", {"x": 4}), project=public) is None
    # ... and nothing on a private one.
    private = lab.probe("anyone-private", 'calculation={"x": 1}', 'calculation={"x": 998}', "list_jobs",
                        who=None, project=pa)
    for answer in private.values():
        assert not answer["ok"], answer
    _same_refusal(private['calculation={"x": 1}'], private['calculation={"x": 998}'])

    ran = lab.runs()[before:]
    assert sorted((r["task"], r["x"]) for r in ran) == [("t.action", 9), ("t.count", 2), ("t.count", 3)], ran


# ---------------------------------------------------------------- replicas


def test_two_hub_processes_on_one_postgresql_share_the_queue(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    env = {"KACHERY_HUB_TASK_LEASE": str(LEASE)}
    hub_a = HubProcess(tmp_path / "hub-a", free_port(), "--database", database)
    hub_b = HubProcess(tmp_path / "hub-b", free_port(), "--database", database)
    with running(hub_a, env=env), running(hub_b, env=env):
        lab = _lab(hub_a, tmp_path)
        try:
            # Requested through A while no backend is online; served by a backend of B.
            requester = lab.request("requester-a", "t.count", {"x": 41})
            requester.wait_event("requesting")
            lab.until(lambda: lab.job(kc.task_job_id("t.count", {"x": 41})), "the job is queued")
            backend = lab.backend("backend-b", hub=hub_b)
            assert requester.result()["worker"] == "backend-b"
            # A cancel through A reaches the handler running under B.
            go = tmp_path / "cancel"
            job = lab.submit("canceller-a", "t.cancellable", {"x": 42}, cancel_when=go)
            lab.until(lambda: lab.runs("t.cancellable"), "the job started on B's backend")
            go.touch()
            assert _failed(job)["type"] == "TaskCancelledError"
            lab.until(lambda: lab.runs("t.cancellable", "cancel seen"), "the handler saw the cancel")
            # Progress and result of a job served through B, to a requester on A.
            gate = tmp_path / "gate"
            watcher = lab.request("watcher-a", "t.progress", {"x": 43, "gate": str(gate)}, progress=True)
            watcher.wait_for(lambda events: any(e["event"] == "progress" and "a quarter done" in json.dumps(e)
                                                for e in events), what="progress through B")
            gate.touch()
            assert watcher.result() == {"x": 43}
            backend.interrupt()
        finally:
            lab.kill_all()
