"""Tasks through an in-process hub on SQLite and PostgreSQL: requests, the cache, errors, cancels, who may.

A backend here is a TaskBackend in this process (threads); separate processes, SIGKILLed
backends and two hub replicas are in test_tasks_processes.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub, signed_headers

import kachery_core as kc
from kachery_core import _hub
from kachery_core._hashing import sha1_of_dict


@pytest.fixture(params=["sqlite", "postgresql"])
def thub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _jobs(hub: Hub, project_id: str) -> dict[str, str]:
    from sqlalchemy import text

    with hub.state.db.begin() as conn:
        rows = conn.execute(text("SELECT job_id, status FROM task_jobs WHERE project_id = :p"), {"p": project_id}).all()
    return {r.job_id: r.status for r in rows}


def test_a_calculation_runs_once_and_is_then_answered_from_the_cache(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    calls: list[dict[str, Any]] = []

    def spikes(n: int, rate: float, scale: float = 1.0) -> dict[str, Any]:
        calls.append({"n": n, "rate": rate})
        return {"times": np.arange(n) / rate * scale, "count": np.int64(n), "meta": {"unit": "s", "ok": True}}

    with kc.TaskBackend(num_workers=2) as backend:
        backend.register_task_handler(task_type="calculation", task_name="spikes.1", task_function=spikes,
                                      extra_kwargs={"scale": 2.0})
        first = kc.request_task(task_type="calculation", task_name="spikes.1", task_input={"n": 4, "rate": 2.0})
    np.testing.assert_array_equal(first["times"], np.arange(4) / 2.0 * 2.0)
    assert first["count"] == 4 and first["meta"] == {"unit": "s", "ok": True} and len(calls) == 1
    # No backend online now: the cache answers, for integral floats written either way.
    again = kc.request_task(task_type="calculation", task_name="spikes.1", task_input={"n": 4.0, "rate": 2})
    np.testing.assert_array_equal(again["times"], first["times"])
    assert len(calls) == 1
    job_id = kc.task_job_id("spikes.1", {"n": 4, "rate": 2.0})
    assert job_id == sha1_of_dict({"taskInput": {"n": 4, "rate": 2}, "taskName": "spikes.1"})
    assert _jobs(thub, project) == {job_id: "finished"}
    handle = kc.submit_task(task_type="calculation", task_name="spikes.1", task_input={"rate": 2, "n": 4})
    assert handle.job_id == job_id and handle.status == "finished"
    [listed] = kc.list_task_jobs()
    assert listed["job_id"] == job_id and listed["requested_by"] == "a@example.org" and "result" not in listed


def test_an_action_runs_every_time_and_a_failed_calculation_runs_again(thub: Hub) -> None:
    thub.sign_in("A", "a@example.org")
    runs: list[str] = []
    fail = threading.Event()
    fail.set()

    def note(text: str) -> None:
        runs.append(text)

    def flaky(x: int) -> int:
        if fail.is_set():
            raise ValueError(f"bad x={x}")
        return x * 10

    with kc.TaskBackend() as backend:
        backend.register_task_handler(task_type="action", task_name="note", task_function=note)
        backend.register_task_handler(task_type="calculation", task_name="flaky", task_function=flaky)
        assert kc.request_task(task_type="action", task_name="note", task_input={"text": "a"}) is None
        assert kc.request_task(task_type="action", task_name="note", task_input={"text": "a"}) is None
        assert runs == ["a", "a"]
        with pytest.raises(kc.TaskError) as e:
            kc.request_task(task_type="calculation", task_name="flaky", task_input={"x": 3})
        assert (e.value.remote_type, e.value.remote_message) == ("ValueError", "bad x=3")
        assert e.value.remote_traceback is not None and "in flaky" in e.value.remote_traceback
        assert "raise ValueError" in str(e.value) and e.value.task_name == "flaky"
        fail.clear()
        assert kc.request_task(task_type="calculation", task_name="flaky", task_input={"x": 3}) == 30


def test_with_no_backend_a_request_times_out_clearly_and_leaves_nothing_queued(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    with pytest.raises(kc.TaskTimeoutError) as e:
        kc.request_task(task_type="calculation", task_name="nobody.serves", task_input={"x": 1}, timeout_sec=1)
    assert "'nobody.serves'" in str(e.value) and "no backend took it" in str(e.value) and not e.value.taken
    assert isinstance(e.value, TimeoutError)
    assert set(_jobs(thub, project).values()) == {"cancelled"}


def test_cancel_a_pending_job_and_a_running_one(thub: Hub) -> None:
    thub.sign_in("A", "a@example.org")
    pending = kc.submit_task(task_type="action", task_name="later", task_input={})
    assert pending.cancel() == "cancelled" and pending.status == "cancelled"
    with pytest.raises(kc.TaskCancelledError):
        pending.result(1)

    started, saw_cancel = threading.Event(), threading.Event()

    def long(steps: int) -> int:
        started.set()
        for i in range(steps):
            kc.report_task_progress(i / steps, f"step {i}")
            if kc.task_cancel_requested():
                saw_cancel.set()
                return -1
            time.sleep(0.05)
        return steps

    with kc.TaskBackend() as backend:
        backend.register_task_handler(task_type="calculation", task_name="long", task_function=long)
        handle = kc.submit_task(task_type="calculation", task_name="long", task_input={"steps": 2000})
        assert started.wait(20)
        assert handle.cancel() in ("started", "cancelled")
        with pytest.raises(kc.TaskCancelledError):
            handle.result(20)
        assert saw_cancel.is_set()
        # Cancelled is not cached: asked again, it runs (and here finishes).
        assert kc.request_task(task_type="calculation", task_name="long", task_input={"steps": 3}) == 3


def test_progress_reaches_the_requester_and_a_large_result_comes_through_a_file(thub: Hub) -> None:
    thub.sign_in("A", "a@example.org")

    def big(n: int) -> Any:
        for i in range(3):
            kc.report_task_progress((i + 1) / 3, f"part {i}")
            time.sleep(0.4)
        return {"values": np.arange(n, dtype=np.float64)}

    seen: list[dict[str, Any]] = []
    with kc.TaskBackend() as backend:
        backend.register_task_handler(task_type="calculation", task_name="big", task_function=big)
        result = kc.request_task(task_type="calculation", task_name="big", task_input={"n": 200_000},
                                 progress=seen.append)
    np.testing.assert_array_equal(result["values"], np.arange(200_000, dtype=np.float64))
    statuses = [r["status"] for r in seen]
    # A backend waiting here takes the job in the request itself: it may be started when first seen.
    assert statuses[0] in ("pending", "started") and statuses[-1] == "finished" and "started" in statuses
    assert any((r.get("progress") or {}).get("message", "").startswith("part") for r in seen)
    [job] = kc.list_task_jobs()
    assert job["result_uri"].startswith("sha1://")  # over 1 MiB of JSON: a file of the project
    assert kc.load_json(job["result_uri"])["values"]["_type"] == "ndarray"


def test_two_requests_of_one_running_calculation_run_it_once(thub: Hub) -> None:
    thub.sign_in("A", "a@example.org")
    runs: list[int] = []
    gate = threading.Event()

    def slow(x: int) -> int:
        runs.append(x)
        gate.wait(20)
        return x + 1

    with kc.TaskBackend(num_workers=4) as backend:
        backend.register_task_handler(task_type="calculation", task_name="slow", task_function=slow)
        first = kc.submit_task(task_type="calculation", task_name="slow", task_input={"x": 1})
        deadline = time.monotonic() + 20
        while not runs and time.monotonic() < deadline:
            time.sleep(0.02)
        second = kc.submit_task(task_type="calculation", task_name="slow", task_input={"x": 1})
        assert second.job_id == first.job_id and second.info()["status"] == "started"
        gate.set()
        assert first.result(20) == second.result(20) == 2
    assert runs == [1]


def test_names_and_inputs_are_checked_by_the_client_and_the_hub(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    for name in ["", "a b", "x" * 201, "../etc", "name/", None, 3]:
        with pytest.raises(kc.InvalidTaskNameError):
            kc.submit_task(task_type="calculation", task_name=name, task_input={})  # type: ignore[arg-type]
    with pytest.raises(kc.InvalidArgumentError, match="task_type"):
        kc.submit_task(task_type="query", task_name="x", task_input={})
    for task_input, where in [([1], "task_input"), ({"a": float("nan")}, r"task_input\['a'\]"),
                              ({"a": {"b": object()}}, r"task_input\['a'\]\['b'\]"), ({"a": np.arange(3)}, r"task_input\['a'\]")]:
        with pytest.raises(kc.TaskInputError, match=where):
            kc.submit_task(task_type="calculation", task_name="x", task_input=task_input)  # type: ignore[arg-type]
    with pytest.raises(kc.TaskInputError, match="over the limit"):
        kc.submit_task(task_type="calculation", task_name="x", task_input={"s": "x" * (1024 * 1024)})
    with pytest.raises(kc.InvalidArgumentError):
        kc.TaskBackend().register_task_handler(task_type="calculation", task_name="x", task_function="not callable")  # type: ignore[arg-type]
    client = _hub.connect()
    assert client.keys is not None
    path = f"/api/projects/{project}/tasks/requests"
    for body, code in [(b'{"task_type":"calculation","task_name":"a b","task_input":{}}', "invalid_input"),
                       (b'{"task_type":"query","task_name":"x","task_input":{}}', "invalid_input"),
                       (b'{"task_type":"calculation","task_name":"x","task_input":[]}', "invalid_input"),
                       (b'{"task_type":"calculation","task_name":"x","task_input":{"a":NaN}}', "invalid_input"),
                       (b'{"task_type":"calculation","task_name":"x","task_input":{"a":1e999}}', "invalid_input"),
                       (b'{"task_type":"calculation"', "invalid_input")]:
        r = thub.http.post(path, content=body, headers={**signed_headers(client.keys, "POST", path, body),
                                                        "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    assert _jobs(thub, project) == {}


def test_who_may_serve_request_and_read(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    with kc.TaskBackend() as backend:
        backend.register_task_handler(task_type="calculation", task_name="double", task_function=lambda x: 2 * x)
        assert kc.request_task(task_type="calculation", task_name="double", task_input={"x": 21}) == 42

        thub.sign_in("B", "b@example.org")  # an outsider
        with pytest.raises(kc.HubPermissionError):
            kc.request_task(task_type="calculation", task_name="double", task_input={"x": 21}, project_id=project)
        with pytest.raises(kc.HubPermissionError):
            kc.list_task_jobs(project)
        with pytest.raises(kc.HubPermissionError):
            kc.TaskBackend(project_id=project).start()

        thub.use("A")
        kc.set_project_member(project, "b@example.org", "read")
        thub.use("B")  # a reader: calculations and cached results, not actions, not serving
        assert kc.request_task(task_type="calculation", task_name="double", task_input={"x": 21}, project_id=project) == 42
        assert kc.request_task(task_type="calculation", task_name="double", task_input={"x": 5}, project_id=project) == 10
        with pytest.raises(kc.HubPermissionError):
            kc.submit_task(task_type="action", task_name="double", task_input={"x": 1}, project_id=project)
        with pytest.raises(kc.HubPermissionError):
            kc.TaskBackend(project_id=project).start()
        assert [b["handlers"] for b in kc.list_task_backends(project)] == [[{"task_name": "double", "task_type": "calculation"}]]
        # A reader may cancel its own request, not someone else's.
        mine = kc.submit_task(task_type="calculation", task_name="nobody", task_input={}, project_id=project)
        assert mine.cancel() == "cancelled"
        thub.use("A")
        theirs = kc.submit_task(task_type="calculation", task_name="nobody", task_input={"y": 1})
        thub.use("B")
        with pytest.raises(kc.HubPermissionError):
            kc.submit_task(task_type="calculation", task_name="nobody", task_input={"y": 1}, project_id=project).cancel()
        assert theirs.job_id

        thub.use("A")
        kc.set_project_public(project, True)
        thub.use("unregistered")  # a key the hub does not know: may request a calculation of a public project
        thub.monkeypatch.setenv("KACHERY_HUB_URL", thub.url)
        _hub.choose(thub.url, None, thub.http)
        assert kc.request_task(task_type="calculation", task_name="double", task_input={"x": 8}, project_id=project) == 16
        assert kc.list_task_jobs(project)[0]["requested_by"] is None  # who asked is for members only
        with pytest.raises(kc.HubAuthError):
            kc.submit_task(task_type="action", task_name="double", task_input={}, project_id=project)
        thub.ephemeral("anon")  # no key at all: reads cached results only
        assert kc.request_task(task_type="calculation", task_name="double", task_input={"x": 21}, project_id=project) == 42
        with pytest.raises(kc.HubAuthError, match="only reads cached results"):
            kc.request_task(task_type="calculation", task_name="double", task_input={"x": 99}, project_id=project)
        with pytest.raises(kc.HubAuthError):
            kc.submit_task(task_type="action", task_name="double", task_input={}, project_id=project)


def _module_level_square(x: int) -> int:
    return x * x


def test_a_dask_local_cluster_serves_a_task_and_an_unpicklable_handler_is_refused(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  request: pytest.FixtureRequest) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    import sys

    # An in-process IPython shell (other tests of this session) leaves a __main__ without __spec__,
    # which multiprocessing's spawn of Dask's worker processes reads.
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", getattr(sys.modules["__main__"], "__spec__", None),
                        raising=False)
    gen = make_hub("sqlite", request, tmp_path, monkeypatch)
    thub = next(gen)
    try:
        thub.sign_in("A", "a@example.org")
        executor = kc.DaskExecutor(n_workers=1)  # a LocalCluster of one worker process
        try:
            lock = threading.Lock()
            with pytest.raises(kc.TaskFunctionError, match="cannot be sent to Dask workers"):
                kc.TaskBackend(executor=executor).register_task_handler(
                    task_type="calculation", task_name="locked", task_function=lambda: lock.acquire())
            with kc.TaskBackend(executor=executor) as backend:
                backend.register_task_handler(task_type="calculation", task_name="square",
                                              task_function=_module_level_square)
                assert kc.request_task(task_type="calculation", task_name="square", task_input={"x": 7}) == 49
                [job] = kc.list_task_jobs()
                assert job["status"] == "finished" and job["backend_id"] == backend.backend_id
        finally:
            executor.shutdown()
    finally:
        gen.close()


# ---------------------------------------------------------------- many at once


def test_submit_tasks_and_gather_tasks_keep_order_cache_and_join(thub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    thub.sign_in("A", "a@example.org")
    from kachery_core import _tasks

    monkeypatch.setattr(_tasks, "BATCH", 3)  # 8 inputs: 3 requests, and waits of 3 jobs at most
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with kc.TaskBackend(num_workers=2) as backend:
        backend.register_task_handler(task_type="calculation", task_name="sq", task_function=square)
        assert kc.request_task(task_type="calculation", task_name="sq", task_input={"x": 5}) == 25
        inputs = [{"x": x} for x in (1, 2, 3, 4, 5, 6, 7, 1)]  # 5: cached; 1 twice: one job
        handles = kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=inputs)
        assert [h.job_id for h in handles] == [kc.task_job_id("sq", i) for i in inputs]
        assert handles[4].status == "finished"  # answered from the cache at once
        assert kc.gather_tasks(handles, timeout=30) == [1, 4, 9, 16, 25, 36, 49, 1]
    assert sorted(calls) == [1, 2, 3, 4, 5, 6, 7]  # each calculation ran once


def test_gather_tasks_raises_the_first_failure_and_times_out_clearly(thub: Hub) -> None:
    thub.sign_in("A", "a@example.org")

    def inverse(x: float) -> float:
        return 1 / x

    with kc.TaskBackend(num_workers=2) as backend:
        backend.register_task_handler(task_type="calculation", task_name="inv", task_function=inverse)
        handles = kc.submit_tasks(task_type="calculation", task_name="inv", task_inputs=[{"x": 2}, {"x": 0}, {"x": 4}])
        with pytest.raises(kc.TaskError) as e:
            kc.gather_tasks(handles, timeout=30)
        assert e.value.remote_type == "ZeroDivisionError" and e.value.job_id == handles[1].job_id
        assert [h._record["status"] for h in handles] == ["finished", "error", "finished"]
    nobody = kc.submit_tasks(task_type="calculation", task_name="nobody.serves", task_inputs=[{"x": 1}])
    with pytest.raises(kc.TaskTimeoutError) as t:
        kc.gather_tasks(nobody, timeout=0.5)
    assert "no backend took it" in str(t.value)


def test_submit_tasks_checks_every_input_and_stores_none_of_a_bad_batch(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    with pytest.raises(kc.TaskInputError) as e:
        kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=[{"x": 1}, {"x": 2}, {"x": [1, {2}]}])
    assert e.value.path == "task_inputs[2]['x'][1]", e.value.path
    for bad in ({"x": 1}, "x", None):
        with pytest.raises(kc.InvalidArgumentError):
            kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=bad)  # type: ignore[arg-type]
    with pytest.raises(kc.InvalidTaskNameError):
        kc.submit_tasks(task_type="calculation", task_name="no spaces", task_inputs=[{"x": 1}])
    # The hub refuses a batch with one bad input whole (a client that does not check).
    client = _hub.connect_signed("x")
    body = b'{"task_type":"calculation","task_name":"sq","task_inputs":[{"x":1},{"x":NaN}]}'
    with pytest.raises(kc.HubRequestError) as r:
        client.json("POST", f"/api/projects/{project}/tasks/requests/batch", content=body,
                    headers={"content-type": "application/json"})
    assert r.value.status == 400
    assert _jobs(thub, project) == {}


def test_who_may_submit_and_gather_many(thub: Hub) -> None:
    project = thub.sign_in("A", "a@example.org")
    kc.set_project_member(project, "reader@example.org", "read")
    thub.sign_in("R", "reader@example.org")
    handles = kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=[{"x": 1}], project_id=project)
    assert handles[0].status == "pending"  # a reader may request calculations...
    with pytest.raises(kc.HubPermissionError):  # ...but not actions
        kc.submit_tasks(task_type="action", task_name="act", task_inputs=[{"x": 1}], project_id=project)
    thub.sign_in("O", "outsider@example.org")
    with pytest.raises((kc.HubPermissionError, kc.HubNotFoundError)):
        kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=[{"x": 2}], project_id=project)
    theirs = kc.TaskHandle(_hub.connect_signed("waiting"), project, handles[0]._record)  # the outsider's own client
    with pytest.raises((kc.HubPermissionError, kc.HubNotFoundError)):
        kc.gather_tasks([theirs], timeout=1)
    assert set(_jobs(thub, project)) == {kc.task_job_id("sq", {"x": 1})}
