"""Hostile requests to a real hub's task endpoints: each is refused with its typed error and changes nothing.

Requests are built by hand (raw sockets) and signed with keys registered
through the API, so anything a client or a rogue backend could send is tried,
as uvicorn parses it. The database matters (what a claim or a completion
records, jobs of two projects under one job id), so the hub runs on SQLite and
on PostgreSQL, one per module and database; each test works in projects of its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from hub_fixtures import postgres_server  # noqa: E402,F401  (a fixture)
from raw_http import Answer, RawHub, running_hub  # noqa: E402

pytestmark = pytest.mark.slow

MiB = 2**20
LEASE = 2.0  # the hub's task lease here (seconds)
USERS = ("alice", "dave", "bob", "carol")  # alice owns; dave may write, bob may read; carol is an outsider


class TaskHub(RawHub):
    def ok(self, method: str, path: str, body: bytes | Any = b"", *, who: str = "alice", timeout: float = 60) -> Any:
        a = self.call(method, path, body, who=who, timeout=timeout)
        assert a.status == 200, (method, path, a.status, a.body[:500])
        return a.json()

    def new_project(self) -> str:
        """A fresh project of alice's, dave a write member, bob a read member."""
        p = str(self.ok("POST", "/api/projects", {"name": "hostile " + secrets.token_hex(3)})["project_id"])
        for email, role in (("dave@example.org", "write"), ("bob@example.org", "read")):
            self.ok("PUT", f"/api/projects/{p}/members/{email}", {"role": role})
        return p

    def request(self, project: str, name: str = "t.calc", task_input: Any = None, task_type: str = "calculation",
                who: str = "alice") -> Answer:
        return self.call("POST", f"/api/projects/{project}/tasks/requests",
                         {"task_type": task_type, "task_name": name,
                          "task_input": {"x": 1} if task_input is None else task_input}, who=who)

    def register(self, project: str, backend_id: str, who: str = "alice",
                 handlers: tuple[tuple[str, str], ...] = (("calculation", "t.calc"), ("action", "t.act"))) -> Answer:
        return self.call("PUT", f"/api/projects/{project}/tasks/backends/{backend_id}",
                         {"handlers": [{"task_type": t, "task_name": n} for t, n in handlers], "label": "hostile",
                          "num_workers": 1}, who=who)

    def claim(self, project: str, backend_id: str, who: str = "alice", *, max_jobs: Any = 1, wait: Any = 0,
              running: list[str] | None = None, timeout: float = 60) -> Answer:
        return self.call("POST", f"/api/projects/{project}/tasks/backends/{backend_id}/claim",
                         {"max_jobs": max_jobs, "wait": wait, "running": running or [], "progress": {}},
                         who=who, timeout=timeout)

    def complete(self, project: str, job_id: str, backend_id: str, who: str = "alice", result: Any = None,
                 status: str = "finished", **extra: Any) -> Answer:
        return self.call("POST", f"/api/projects/{project}/tasks/jobs/{job_id}/complete",
                         {"backend_id": backend_id, "status": status, "result": result, **extra}, who=who)

    def job(self, project: str, job_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/projects/{project}/tasks/jobs/{job_id}"))

    def jobs(self, project: str) -> list[dict[str, Any]]:
        answer = self.ok("GET", f"/api/projects/{project}/tasks/jobs?limit=1000")
        jobs = answer["jobs"] if isinstance(answer, dict) else answer
        return list(jobs)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def task_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskHub]:
    with running_hub(request, tmp_path_factory, "tasks-hostile", {"KACHERY_HUB_TASK_LEASE": str(LEASE)},
                     USERS) as (proc, keys, _):
        yield TaskHub(proc, keys)


@pytest.fixture
def project(task_hub: TaskHub) -> str:
    return task_hub.new_project()


def _nothing_queued(task_hub: TaskHub, project: str) -> None:
    assert task_hub.jobs(project) == [], "a refused request queued a job"


def _backend_id() -> str:
    return "b" + secrets.token_hex(8)


def _pending(task_hub: TaskHub, project: str, x: int = 1) -> str:
    a = task_hub.request(project, task_input={"x": x})
    assert a.status == 200 and a.json()["status"] == "pending", (a.status, a.body)
    return str(a.json()["job_id"])


# ---------------------------------------------------------------- request bodies


def test_an_input_over_one_mib_is_refused_and_one_of_exactly_one_mib_is_not(task_hub: TaskHub, project: str) -> None:
    fill = MiB - len('{"s":""}')  # canonical JSON of {"s": "x" * fill} is exactly 1 MiB
    a = task_hub.request(project, task_input={"s": "x" * (fill + 1)})
    assert (a.status, a.code) in ((413, "payload_too_large"), (400, "invalid_input")), (a.status, a.body[:300])
    assert "input" in a.message, a.message
    _nothing_queued(task_hub, project)
    a = task_hub.request(project, task_input={"s": "\u00e9" * (fill // 6 + 1)})  # 6 bytes each as canonical JSON
    assert a.status in (400, 413), (a.status, a.body[:300])
    _nothing_queued(task_hub, project)
    # A body over the hub's JSON body limit is refused before it is parsed.
    a = task_hub.request(project, task_input={f"s{i}": "y" * (MiB - 100) for i in range(5)})
    assert a.status == 413 and a.code == "payload_too_large", (a.status, a.body[:300])
    _nothing_queued(task_hub, project)
    a = task_hub.request(project, task_input={"s": "x" * fill})
    assert a.status == 200, (a.status, a.body[:300])
    assert a.json()["job_id"] == kc.task_job_id("t.calc", {"s": "x" * fill})


@pytest.mark.parametrize("body", [
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": [1]}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": "x"}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": null}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": 5}',
    b'{"task_type": "calculation", "task_name": "t.calc"}',
    b'{"task_type": "calculation", "task_input": {}}',
    b'{"task_name": "t.calc", "task_input": {}}',
    b'{"task_type": "query", "task_name": "t.calc", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "../../etc", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "a b", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "caf\\u00e9", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "' + b"x" * 201 + b'", "task_input": {}}',
    b'{"task_type": "calculation", "task_name": ["t.calc"], "task_input": {}}',
    b'{"task_type": "calculation", "task_name": null, "task_input": {}}',
    b'{"task_type": "calculation", "task_name": 5, "task_input": {}}',
    b'{"task_type": "calculation", "task_name": true, "task_input": {}}',
    b'{"task_type": "calculation", "task_name": 1.5, "task_input": {}}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": {"a": NaN}}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": {"a": [1, Infinity]}}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": {"a": -Infinity}}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_input": {"a": 1e999}}',
    b'[]', b'null', b'"t.calc"',
])
def test_a_request_that_is_not_a_task_is_refused(task_hub: TaskHub, project: str, body: bytes) -> None:
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/requests", body)
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (a.status, a.body[:300])
    _nothing_queued(task_hub, project)


MALFORMED = [b'{"task_type": ', b"\xff\xfe{}", b'{"a": 1,}', b"{'a': 1}", b"[" * 100_000 + b"]" * 100_000, b""]


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("endpoint", ["requests", "backend", "claim", "complete", "cancel"])
def test_malformed_json_is_refused_on_every_task_endpoint(task_hub: TaskHub, project: str, endpoint: str,
                                                          body: bytes) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    path, method = {
        "requests": (f"/api/projects/{project}/tasks/requests", "POST"),
        "backend": (f"/api/projects/{project}/tasks/backends/{backend}", "PUT"),
        "claim": (f"/api/projects/{project}/tasks/backends/{backend}/claim", "POST"),
        "complete": (f"/api/projects/{project}/tasks/jobs/{job}/complete", "POST"),
        "cancel": (f"/api/projects/{project}/tasks/jobs/{job}/cancel", "POST"),
    }[endpoint]
    a = task_hub.call(method, path, body)
    if endpoint == "cancel" and a.status == 200:
        return  # cancel needs no body: one it ignores is fine
    # (400 bad_request: the hub's answer to a body its JSON parser gives up on, as on its other endpoints.)
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request"), (400, "bad_request")), \
        (a.status, a.body[:300])
    jobs = task_hub.jobs(project)
    assert [(j["job_id"], j["status"], j["attempts"]) for j in jobs] == [(job, "pending", 0)], jobs


def test_an_unsigned_request_is_refused_and_queues_nothing(task_hub: TaskHub, project: str) -> None:
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/requests",
                      {"task_type": "calculation", "task_name": "t.calc", "task_input": {}}, who=None)
    assert a.status == 401 and a.code == "unauthenticated", a.body
    _nothing_queued(task_hub, project)


# ---------------------------------------------------------------- backends that cheat


def test_a_backend_completing_a_job_it_does_not_hold_is_refused_and_nothing_is_recorded(
    task_hub: TaskHub, project: str
) -> None:
    mine, other, dave = _backend_id(), _backend_id(), _backend_id()
    for backend, who in ((mine, "alice"), (other, "alice"), (dave, "dave")):
        assert task_hub.register(project, backend, who=who).status == 200
    job = _pending(task_hub, project)
    # Pending, never claimed: nobody holds it.
    a = task_hub.complete(project, job, mine, result={"forged": 0})
    assert a.status == 409 and a.code == "lease_lost", (a.status, a.body)
    claimed = task_hub.claim(project, mine).json()
    assert [j["job_id"] for j in claimed["jobs"]] == [job] and claimed["jobs"][0]["attempt"] == 1, claimed
    # Another backend, of the same user or of another writer: not theirs.
    for backend, who in ((other, "alice"), (dave, "dave")):
        a = task_hub.complete(project, job, backend, who=who, result={"forged": backend})
        assert a.status == 409 and a.code == "lease_lost", (a.status, a.body)
        a = task_hub.complete(project, job, backend, who=who, status="error",
                              error={"type": "X", "message": "forged", "traceback": ""})
        assert a.status == 409 and a.code == "lease_lost", (a.status, a.body)
    record = task_hub.job(project, job)
    assert record["status"] == "started" and record.get("result") is None and record["backend_id"] == mine, record
    # The holder completes it; afterwards nobody can change it, the holder included.
    assert task_hub.complete(project, job, mine, result={"real": True}).status == 200
    for backend, who in ((mine, "alice"), (other, "alice"), (dave, "dave")):
        a = task_hub.complete(project, job, backend, who=who, result={"forged": "late"})
        assert a.status == 409 and a.code == "lease_lost", (a.status, a.body)
    record = task_hub.job(project, job)
    assert record["status"] == "finished" and record["result"] == {"real": True}, record


def test_a_backend_whose_lease_lapsed_cannot_complete_the_job_it_lost(task_hub: TaskHub, project: str) -> None:
    slow, fresh = _backend_id(), _backend_id()
    for backend in (slow, fresh):
        assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    assert [j["job_id"] for j in task_hub.claim(project, slow).json()["jobs"]] == [job]
    # slow stops renewing; after its lease the job is claimed by another backend.
    deadline = time.monotonic() + 10 * LEASE + 30
    while True:
        got = task_hub.claim(project, fresh, wait=LEASE).json()["jobs"]
        if got or time.monotonic() > deadline:
            break
    assert [(j["job_id"], j["attempt"]) for j in got] == [(job, 2)], got
    a = task_hub.complete(project, job, slow, result={"from": "slow"})
    assert a.status == 409 and a.code == "lease_lost", (a.status, a.body)
    # Nor does renewing it (listing it as running) give it back.
    renewed = task_hub.claim(project, slow, running=[job]).json()
    assert renewed["jobs"] == [], renewed
    assert task_hub.complete(project, job, fresh, result={"from": "fresh"}).status == 200
    record = task_hub.job(project, job)
    assert record["status"] == "finished" and record["result"] == {"from": "fresh"} and record["attempts"] == 2, record


def test_a_forged_backend_id_of_another_user_is_refused(task_hub: TaskHub, project: str) -> None:
    alices = _backend_id()
    assert task_hub.register(project, alices).status == 200
    # dave (a writer of the project) takes over alice's backend id: to register, claim, or complete.
    a = task_hub.register(project, alices, who="dave", handlers=(("calculation", "t.evil"),))
    assert a.status in (403, 409) and a.code, (a.status, a.body)
    job = _pending(task_hub, project)
    a = task_hub.claim(project, alices, who="dave")
    assert a.status in (403, 404, 409) and a.code, (a.status, a.body)
    assert task_hub.job(project, job)["status"] == "pending"
    assert [j["job_id"] for j in task_hub.claim(project, alices).json()["jobs"]] == [job]
    a = task_hub.complete(project, job, alices, who="dave", result={"forged": True})
    assert a.status in (403, 409) and a.code, (a.status, a.body)
    a = task_hub.call("DELETE", f"/api/projects/{project}/tasks/backends/{alices}", who="dave")
    assert a.status in (403, 404, 409) and a.code, (a.status, a.body)
    listed = task_hub.ok("GET", f"/api/projects/{project}/tasks/backends")
    backends = listed["backends"] if isinstance(listed, dict) else listed
    mine = [b for b in backends if b["backend_id"] == alices]
    assert len(mine) == 1 and [h["task_name"] for h in mine[0]["handlers"]] == ["t.calc", "t.act"], mine
    assert task_hub.complete(project, job, alices, result={"real": 1}).status == 200
    assert task_hub.job(project, job)["result"] == {"real": 1}


def test_a_read_member_cannot_register_claim_or_complete(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    a = task_hub.register(project, backend, who="bob")
    assert a.status == 403 and a.code, (a.status, a.body)
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    a = task_hub.claim(project, backend, who="bob")
    assert a.status in (403, 409) and a.code, (a.status, a.body)
    assert task_hub.job(project, job)["status"] == "pending"
    # A read member requests a calculation, not an action.
    assert task_hub.request(project, task_input={"x": 77}, who="bob").status == 200
    a = task_hub.request(project, name="t.act", task_type="action", who="bob")
    assert a.status == 403 and a.code, (a.status, a.body)
    assert not [j for j in task_hub.jobs(project) if j["task_type"] == "action"]


@pytest.mark.parametrize(("max_jobs", "wait"), [
    (-1, 0), (1.5, 0), (None, 0), ("many", 0), (1, -1), (1, "abc"), (1, None), (1, [1]),
])
def test_a_claim_with_bad_max_jobs_or_wait_is_refused(task_hub: TaskHub, project: str, max_jobs: Any, wait: Any) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    a = task_hub.claim(project, backend, max_jobs=max_jobs, wait=wait)
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (max_jobs, wait, a.status, a.body)
    assert task_hub.job(project, job)["status"] == "pending"


@pytest.mark.parametrize("wait", [b"NaN", b"Infinity", b"1e999", b"-Infinity"])
def test_a_claim_with_a_non_finite_wait_is_refused(task_hub: TaskHub, project: str, wait: bytes) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    body = b'{"max_jobs": 1, "wait": ' + wait + b', "running": [], "progress": {}}'
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/backends/{backend}/claim", body, timeout=90)
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (a.status, a.body)


def test_a_claim_with_huge_max_jobs_and_wait_gets_what_is_there_and_never_hangs(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    jobs = {_pending(task_hub, project, x) for x in range(3)}
    for max_jobs, wait in ((10**9, 0), (2**63, 10**9), (10**30, 1e300)):
        a = task_hub.claim(project, backend, max_jobs=max_jobs, wait=wait, running=sorted(jobs), timeout=90)
        if a.status != 200:  # refused as out of range: fine, and said so
            assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (a.status, a.body)
            continue
        got = {j["job_id"] for j in a.json()["jobs"]}
        assert got <= jobs, got
        jobs -= got
    # Whatever was refused, a claim in range takes the rest at once.
    got = {j["job_id"] for j in task_hub.claim(project, backend, max_jobs=10, wait=0).json()["jobs"]}
    assert got == jobs
    # With nothing to claim, a huge wait either is refused or comes back (the hub caps it): the socket's 90 s.
    a = task_hub.claim(project, backend, max_jobs=1, wait=10**9, timeout=90)
    assert a.status in (200, 400, 422), (a.status, a.body)
    if a.status == 200:
        assert a.json()["jobs"] == []


def test_a_backend_with_too_many_or_bad_handlers_is_refused(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    for handlers in ((("calculation", "../x"),), (("query", "t.calc"),), (("calculation", ""),),
                     (("calculation", "x" * 201),)):
        a = task_hub.register(project, backend, handlers=handlers)
        assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (handlers, a.status, a.body)
    many = tuple(("calculation", f"t.n{i}") for i in range(100_000))
    a = task_hub.register(project, backend, handlers=many)
    assert a.status in (400, 413, 422) and a.code, (a.status, a.body[:300])
    listed = task_hub.ok("GET", f"/api/projects/{project}/tasks/backends")
    backends = listed["backends"] if isinstance(listed, dict) else listed
    assert not [b for b in backends if b["backend_id"] == backend], backends


@pytest.mark.parametrize("body", [
    {"status": "pending"}, {"status": "started"}, {"status": "bogus"}, {"status": None},
    {"status": "finished", "result_uri": "file:///etc/passwd"}, {"status": "finished", "result_uri": "sha1://nothex"},
    {"status": "error", "error": "just a string"},
])
def test_a_completion_that_makes_no_sense_is_refused(task_hub: TaskHub, project: str, body: dict[str, Any]) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    assert task_hub.claim(project, backend).json()["jobs"]
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/{job}/complete", {"backend_id": backend, **body})
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (body, a.status, a.body)
    record = task_hub.job(project, job)
    assert record["status"] == "started" and record.get("result") is None and record["result_uri"] is None, record


def test_a_result_with_nan_is_refused(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project)
    assert task_hub.claim(project, backend).json()["jobs"]
    body = b'{"backend_id": "' + backend.encode() + b'", "status": "finished", "result": {"a": NaN}}'
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/{job}/complete", body)
    assert (a.status, a.code) in ((400, "invalid_input"), (422, "invalid_request")), (a.status, a.body)
    assert task_hub.job(project, job)["status"] == "started"


# ---------------------------------------------------------------- ids with path tricks


BAD_IDS = ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", "..", ".", "%2E", "a%00b", "%00", "x" * 5000, "f%20x", "%C3%A9t%C3%A9",
           "f;drop", "f'--", "%2Fapi%2Fhealth"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
@pytest.mark.parametrize(("method", "template"), [
    ("GET", "/api/projects/{p}/tasks/jobs/{id}"), ("GET", "/api/projects/{p}/tasks/jobs/{id}/events?wait=1"),
    ("POST", "/api/projects/{p}/tasks/jobs/{id}/cancel"), ("POST", "/api/projects/{p}/tasks/jobs/{id}/complete"),
    ("PUT", "/api/projects/{p}/tasks/backends/{id}"), ("POST", "/api/projects/{p}/tasks/backends/{id}/claim"),
    ("DELETE", "/api/projects/{p}/tasks/backends/{id}"),
])
def test_a_malformed_job_or_backend_id_is_refused(task_hub: TaskHub, project: str, bad_id: str, method: str,
                                                  template: str) -> None:
    body: Any = b""
    if template.endswith("complete"):
        body = {"backend_id": "b1", "status": "finished", "result": 1}
    elif template.endswith("claim"):
        body = {"max_jobs": 1, "wait": 0, "running": [], "progress": {}}
    elif method == "PUT":
        body = {"handlers": [{"task_type": "calculation", "task_name": "t.calc"}], "label": None, "num_workers": 1}
    a = task_hub.call(method, template.format(p=project, id=bad_id), body, timeout=30)
    assert (a.status, a.code) in ((400, "invalid_input"), (404, "job_not_found"), (404, "not_found"),
                                  (404, "backend_not_found"), (405, "method_not_allowed")), (a.status, a.body[:300])
    assert not a.headers["content-type"].startswith("text/event-stream")
    assert task_hub.jobs(project) == []
    listed = task_hub.ok("GET", f"/api/projects/{project}/tasks/backends")
    assert (listed["backends"] if isinstance(listed, dict) else listed) == []


# ---------------------------------------------------------------- who is asking


def test_an_outsider_learns_nothing_of_another_projects_jobs(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project, x=5)
    missing = kc.task_job_id("t.calc", {"never": "requested"})
    for method, template, body in [
        ("GET", "/api/projects/{p}/tasks/jobs/{id}", b""), ("GET", "/api/projects/{p}/tasks/jobs/{id}/events?wait=1", b""),
        ("POST", "/api/projects/{p}/tasks/jobs/{id}/cancel", b"{}"),
        ("POST", "/api/projects/{p}/tasks/jobs/{id}/complete",
         {"backend_id": backend, "status": "finished", "result": {"forged": True}}),
    ]:
        private = task_hub.call(method, template.format(p=project, id=job), body, who="carol", timeout=30)
        absent = task_hub.call(method, template.format(p=project, id=missing), body, who="carol", timeout=30)
        assert private.status == absent.status and private.status in (403, 404), (template, private.body)
        assert private.body.replace(job.encode(), b"ID") == absent.body.replace(missing.encode(), b"ID"), template
        assert not private.headers["content-type"].startswith("text/event-stream")
    for method, template, body in [
        ("GET", "/api/projects/{p}/tasks/jobs", b""), ("GET", "/api/projects/{p}/tasks/backends", b""),
        ("POST", "/api/projects/{p}/tasks/requests", {"task_type": "calculation", "task_name": "t.calc",
                                                       "task_input": {"x": 5}}),
        ("PUT", f"/api/projects/{{p}}/tasks/backends/{backend}", {"handlers": [], "label": None, "num_workers": 1}),
        ("POST", f"/api/projects/{{p}}/tasks/backends/{backend}/claim",
         {"max_jobs": 1, "wait": 0, "running": [], "progress": {}}),
    ]:
        a = task_hub.call(method, template.format(p=project), body, who="carol")
        assert a.status in (403, 404) and a.code, (template, a.status, a.body)
        assert job.encode() not in a.body and backend.encode() not in a.body
    record = task_hub.job(project, job)
    assert record["status"] == "pending" and not record["cancel_requested"], record


def test_the_same_calculation_in_two_projects_is_two_jobs(task_hub: TaskHub, project: str) -> None:
    """The job id is the hash of name and input alone: another project's cached answer is not shared."""
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    job = _pending(task_hub, project, x=6)
    assert [j["job_id"] for j in task_hub.claim(project, backend).json()["jobs"]] == [job]
    assert task_hub.complete(project, job, backend, result={"secret": "alice's"}).status == 200
    # carol, in a project of her own, asks for the same calculation.
    carols = str(task_hub.ok("POST", "/api/projects", {"name": "carol's"}, who="carol")["project_id"])
    a = task_hub.request(carols, task_input={"x": 6}, who="carol")
    assert a.status == 200, a.body
    assert a.json()["job_id"] == job and a.json()["status"] == "pending", a.json()
    assert "secret" not in a.body.decode()
    mine = task_hub.ok("GET", f"/api/projects/{carols}/tasks/jobs/{job}", who="carol")
    assert mine["status"] == "pending" and mine.get("result") is None and mine["project_id"] == carols, mine
    # carol's backend gets carol's job; alice's stays as it was.
    carols_backend = _backend_id()
    assert task_hub.register(carols, carols_backend, who="carol").status == 200
    claimed = task_hub.claim(carols, carols_backend, who="carol").json()["jobs"]
    assert [j["job_id"] for j in claimed] == [job]
    assert task_hub.complete(carols, job, carols_backend, who="carol", result={"mine": "carol's"}).status == 200
    assert task_hub.job(project, job)["result"] == {"secret": "alice's"}
    assert task_hub.ok("GET", f"/api/projects/{carols}/tasks/jobs/{job}", who="carol")["result"] == {"mine": "carol's"}


def test_only_writers_and_the_requester_may_cancel(task_hub: TaskHub, project: str) -> None:
    alices = _pending(task_hub, project, x=1)
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/{alices}/cancel", b"{}", who="bob")
    assert a.status == 403 and a.code, (a.status, a.body)
    assert task_hub.job(project, alices)["status"] == "pending"
    bobs = task_hub.request(project, task_input={"x": 2}, who="bob").json()["job_id"]
    assert task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/{bobs}/cancel", b"{}", who="bob").status == 200
    assert task_hub.job(project, bobs)["status"] == "cancelled"
    assert task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/{alices}/cancel", b"{}", who="dave").status == 200
    assert task_hub.job(project, alices)["status"] == "cancelled"


def test_simultaneous_requests_of_one_new_calculation_make_one_job(task_hub: TaskHub, project: str) -> None:
    """Many requests of a calculation nobody asked for yet, at the same moment: one job, each told its id."""
    import threading

    n = 16
    barrier = threading.Barrier(n)
    answers: list[Answer] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        a = task_hub.request(project, task_input={"same": True}, who=("alice", "dave", "bob")[i % 3])
        with lock:
            answers.append(a)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == n
    assert [a.status for a in answers] == [200] * n, [(a.status, a.body[:300]) for a in answers if a.status != 200]
    job = kc.task_job_id("t.calc", {"same": True})
    assert {a.json()["job_id"] for a in answers} == {job}
    assert [(j["job_id"], j["status"]) for j in task_hub.jobs(project)] == [(job, "pending")]


def test_two_backends_claiming_at_once_never_get_the_same_job(task_hub: TaskHub, project: str) -> None:
    import threading

    backends = [_backend_id() for _ in range(6)]
    for b in backends:
        assert task_hub.register(project, b).status == 200
    jobs = {_pending(task_hub, project, x) for x in range(12)}
    barrier = threading.Barrier(len(backends))
    got: dict[str, list[str]] = {}

    def claim(b: str) -> None:
        barrier.wait()
        a = task_hub.claim(project, b, max_jobs=3)
        assert a.status == 200, a.body
        got[b] = [j["job_id"] for j in a.json()["jobs"]]

    threads = [threading.Thread(target=claim, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    taken = [j for b in backends for j in got.get(b, [])]
    assert len(taken) == len(set(taken)), got  # no job handed to two backends
    assert set(taken) <= jobs and len(taken) == 12, got
    for b in backends:
        for job in got[b]:
            record = task_hub.job(project, job)
            assert record["status"] == "started" and record["backend_id"] == b and record["attempts"] == 1, record


def test_the_client_refuses_a_backend_id_a_url_would_rewrite() -> None:
    # "." and ".." are path segments an HTTP client or proxy resolves: /backends/.. is not that backend.
    for backend_id in (".", "..", "a/b", "", "x" * 101):
        with pytest.raises(kc.InvalidArgumentError):
            kc.TaskBackend(backend_id=backend_id)


# ---------------------------------------------------------------- many at once: requests/batch and jobs/wait


def _batch(task_hub: TaskHub, project: str, inputs: Any, who: str = "alice", task_type: str = "calculation") -> Answer:
    return task_hub.call("POST", f"/api/projects/{project}/tasks/requests/batch",
                         {"task_type": task_type, "task_name": "t.calc", "task_inputs": inputs}, who=who)


def _wait(task_hub: TaskHub, project: str, body: Any, who: str = "alice", timeout: float = 60) -> Answer:
    return task_hub.call("POST", f"/api/projects/{project}/tasks/jobs/wait", body, who=who, timeout=timeout)


@pytest.mark.parametrize("inputs", [
    [], None, {"x": 1}, "x", [{"x": 1}, [2]], [{"x": 1}, None], [{"x": 1}] * 1001,
    [{"x": 1}, {"s": "x" * (MiB + 10)}],
])
def test_a_batch_that_is_not_tasks_is_refused_whole(task_hub: TaskHub, project: str, inputs: Any) -> None:
    a = _batch(task_hub, project, inputs)
    assert (a.status, a.code) in ((400, "invalid_input"), (413, "payload_too_large")), (a.status, a.body[:300])
    _nothing_queued(task_hub, project)


@pytest.mark.parametrize("body", [
    b'{"task_type": "calculation", "task_name": "t.calc", "task_inputs": [{"x": 1}, {"a": NaN}]}',
    b'{"task_type": "calculation", "task_name": "t.calc", "task_inputs": [{"a": 1e999}]}',
    b'{"task_type": "query", "task_name": "t.calc", "task_inputs": [{}]}',
    b'{"task_type": "calculation", "task_name": "../x", "task_inputs": [{}]}',
    b'{"task_type": "calculation", "task_inputs": [{}]}',
    b"[]", b'{"task_type": "calculation", "task_name": "t.calc", "task_inputs": "x"}',
] + MALFORMED)
def test_a_malformed_batch_body_is_refused(task_hub: TaskHub, project: str, body: bytes) -> None:
    a = task_hub.call("POST", f"/api/projects/{project}/tasks/requests/batch", body)
    assert (a.status, a.code) in ((400, "invalid_input"), (400, "bad_request"), (422, "invalid_request")), \
        (a.status, a.body[:300])
    _nothing_queued(task_hub, project)


def test_a_batch_over_the_body_limit_is_refused_before_it_is_read(task_hub: TaskHub, project: str) -> None:
    a = _batch(task_hub, project, [{"s": "y" * (MiB - 100)} for _ in range(5)])
    assert (a.status, a.code) == (413, "payload_too_large"), (a.status, a.body[:300])
    _nothing_queued(task_hub, project)


def test_who_may_batch(task_hub: TaskHub, project: str) -> None:
    a = _batch(task_hub, project, [{"x": 1}], task_type="action", who="bob")  # a reader: no actions
    assert (a.status, a.code) == (403, "forbidden"), a.body
    for who in ("carol", None):  # an outsider; an unsigned request
        a = _batch(task_hub, project, [{"x": 1}], who=who)  # type: ignore[arg-type]
        assert a.status in (401, 403, 404), (who, a.status, a.body)
    _nothing_queued(task_hub, project)
    a = _batch(task_hub, project, [{"x": 1}, {"x": 2}], who="bob")  # a reader may request calculations
    assert a.status == 200 and [j["status"] for j in a.json()["jobs"]] == ["pending", "pending"], a.body


@pytest.mark.parametrize("body", [
    {"job_ids": [], "wait": 0}, {"job_ids": "abc", "wait": 0}, {"job_ids": ["a" * 65], "wait": 0},
    {"job_ids": ["../x"], "wait": 0}, {"job_ids": [1], "wait": 0}, {"job_ids": ["a"] * 1001, "wait": 0},
    {"job_ids": ["a"], "wait": -1}, {"job_ids": ["a"], "wait": 61}, {"job_ids": ["a"], "wait": "soon"},
    {"job_ids": ["a"], "wait": True}, {"wait": 1},
])
def test_a_wait_with_bad_ids_or_time_is_refused(task_hub: TaskHub, project: str, body: dict[str, Any]) -> None:
    a = _wait(task_hub, project, body)
    assert (a.status, a.code) == (400, "invalid_input"), (body, a.status, a.body[:300])


@pytest.mark.parametrize("wait", [b"NaN", b"Infinity", b"1e999"])
def test_a_wait_with_a_non_finite_time_is_refused(task_hub: TaskHub, project: str, wait: bytes) -> None:
    a = _wait(task_hub, project, b'{"job_ids": ["a"], "wait": ' + wait + b"}")
    assert a.status == 400, (a.status, a.body[:300])


def test_an_outsider_learns_nothing_from_a_wait(task_hub: TaskHub, project: str) -> None:
    job = _pending(task_hub, project, x=7)
    missing = kc.task_job_id("t.calc", {"never": "requested"})
    private = _wait(task_hub, project, {"job_ids": [job], "wait": 0}, who="carol")
    absent = _wait(task_hub, project, {"job_ids": [missing], "wait": 0}, who="carol")
    assert private.status == absent.status and private.status in (403, 404), private.body
    assert private.body.replace(job.encode(), b"ID") == absent.body.replace(missing.encode(), b"ID")
    # A member asking for a job the project does not have is told which.
    a = _wait(task_hub, project, {"job_ids": [job, missing], "wait": 0})
    assert (a.status, a.code) == (404, "job_not_found") and missing in a.message, a.body


def test_a_wait_answers_once_every_job_ended_with_their_results(task_hub: TaskHub, project: str) -> None:
    backend = _backend_id()
    assert task_hub.register(project, backend).status == 200
    jobs = [j["job_id"] for j in _batch(task_hub, project, [{"x": i} for i in range(3)]).json()["jobs"]]
    claimed = task_hub.claim(project, backend, max_jobs=3).json()["jobs"]
    assert sorted(j["job_id"] for j in claimed) == sorted(jobs)
    for job in jobs[:2]:
        assert task_hub.complete(project, job, backend, result={"job": job}).status == 200
    started = time.monotonic()
    a = _wait(task_hub, project, {"job_ids": jobs + [jobs[0]], "wait": 0.5})  # one not ended: after `wait`
    assert time.monotonic() - started >= 0.45
    records = a.json()["jobs"]
    assert [r["status"] for r in records] == ["finished", "finished", "started", "finished"]
    assert [r.get("result") for r in records[:2]] == [{"job": jobs[0]}, {"job": jobs[1]}]
    assert task_hub.complete(project, jobs[2], backend, result=None, status="error",
                             error={"type": "E", "message": "no"}).status == 200
    records = _wait(task_hub, project, {"job_ids": jobs, "wait": 30}).json()["jobs"]
    assert [r["status"] for r in records] == ["finished", "finished", "error"]
    # Another member sees who asked (looked up for it), and the results.
    seen = _wait(task_hub, project, {"job_ids": jobs, "wait": 0}, who="bob").json()["jobs"]
    assert [r["requested_by"] for r in seen] == ["alice@example.org"] * 3, seen
    assert [r.get("result") for r in seen[:2]] == [{"job": jobs[0]}, {"job": jobs[1]}]
