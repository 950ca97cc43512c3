"""The task panel's kernel side against a real hub process: snapshots, live updates, closing.

The front end is stood in for by calling the widget's message handler with the
messages js/taskpanel.js sends, and by recording what the widget sends back; the
requester is a separate Python process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)
from kachery_jupyter import TaskPanel
from kachery_jupyter._taskmagic import kernel_tasks

WAIT_S = 30.0  # a bound for waits that end as soon as the awaited thing happens
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class FrontEnd:
    """What the panel sends, as the browser would receive it."""

    def __init__(self, panel: TaskPanel) -> None:
        self.panel = panel
        self.snapshots: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        panel.send = self._receive

    def _receive(self, content: dict[str, Any], buffers: Any = None) -> None:
        with self._changed:
            assert content["type"] == "snapshot"
            self.snapshots.append(content)
            self._changed.notify_all()

    def send(self, **content: Any) -> None:
        self.panel._on_msg(self.panel, content, None)

    def wait_for(self, what: str, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        with self._changed:
            while True:
                for snapshot in reversed(self.snapshots):
                    if test(snapshot):
                        found: dict[str, Any] = snapshot
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no snapshot with {what}: {self.snapshots[-1:]}")
                self._changed.wait(left)


@pytest.fixture
def ada(real_hub: HubProcess) -> Iterator[HubProcess]:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    try:
        yield real_hub
    finally:
        kernel_tasks.stop()


def request_from_another_process(hub: HubProcess, tmp_path: Path, task_type: str, name: str, task_input: dict[str, Any],
                                 *, check: bool = True) -> str:
    """Another computer (its own key, signed in as bob, a writer) requests the task; its output."""
    code = (
        "import kachery_core as kc\n"
        f"kc.init(hub_url={hub.url!r}, token={hub.token('bob@example.org')!r})\n"
        "try:\n"
        f"    print('result', kc.request_task(task_type={task_type!r}, task_name={name!r}, task_input={task_input!r},"
        f" timeout_sec=60, project_id={kc.get_project_id()!r}))\n"
        "except kc.TaskError as e:\n"
        "    print('TaskError', e.remote_type)\n"
    )
    return run_python(code, env={"KACHERY_CLOUD_DIR": str(tmp_path / "other-computer")}, check=check).stdout


def add_writer(email: str) -> None:
    kc.set_project_member(kc.get_project_id(), email, "write")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def fails(x: int) -> int:
    return x // 0


def test_a_job_requested_elsewhere_reaches_the_panel_live(ada: HubProcess, tmp_path: Path) -> None:
    add_writer("bob@example.org")
    panel = TaskPanel(limit=50)
    panel.interval = 0.1
    front = FrontEnd(panel)
    assert not panel.watching and front.snapshots == [], "nothing is asked before a front end is attached"
    front.send(type="ready")
    assert panel.watching and panel.status == "live"
    first = front.wait_for("no backend yet", lambda s: True)
    assert first["backends"] == [] and first["jobs"] == []

    kernel_tasks.serve(task_name="mean", task_function=mean)
    kernel_tasks.serve(task_name="fails", task_function=fails)
    backend = front.wait_for("this kernel's backend with both handlers",
                             lambda s: bool(s["backends"]) and len(s["backends"][0]["handlers"]) == 2)["backends"][0]
    assert backend["this_kernel"] is True and backend["label"].startswith("notebook kernel ")
    assert backend["handlers"] == [["calculation", "fails"], ["calculation", "mean"]]
    assert isinstance(backend["last_heartbeat"], float) and abs(backend["last_heartbeat"] - time.time()) < 3600

    assert "result 2.0" in request_from_another_process(ada, tmp_path, "calculation", "mean", {"values": [1, 2, 3]})
    snap = front.wait_for("the finished job", lambda s: any(j["status"] == "finished" for j in s["jobs"]))
    job = next(j for j in snap["jobs"] if j["task_name"] == "mean")
    assert job["requested_by"] == "bob@example.org" and job["task_type"] == "calculation"
    assert job["job_id"] == kc.task_job_id("mean", {"values": [1, 2, 3]})
    assert job["started_at"] is not None and job["finished_at"] >= job["started_at"]
    assert job["error"] is None and "result" not in job, "the result itself stays on the hub"

    assert "TaskError ZeroDivisionError" in request_from_another_process(ada, tmp_path, "calculation", "fails", {"x": 1})
    snap = front.wait_for("the failed job", lambda s: any(j["status"] == "error" for j in s["jobs"]))
    failed = next(j for j in snap["jobs"] if j["status"] == "error")
    assert failed["error"]["type"] == "ZeroDivisionError"
    assert failed["error"]["message"] == "integer division or modulo by zero"
    assert "Traceback" in failed["error"]["traceback"] and "x // 0" in failed["error"]["traceback"]

    text = panel.text()
    assert f"kachery tasks of project {kc.get_project_id()}: 1 backend online (2 handlers), 2 recent jobs" in text
    assert "calculation fails, calculation mean" in text
    assert "by bob@example.org (ZeroDivisionError: " in text
    panel.close()
    assert panel.wait_stopped(WAIT_S) and not panel.watching and panel.status == "closed"


def test_an_unchanged_project_is_not_sent_again(ada: HubProcess) -> None:
    panel = TaskPanel()
    panel.interval = 0.02
    front = FrontEnd(panel)
    front.send(type="ready")
    front.wait_for("the first snapshot", lambda s: True)
    looks = 0
    real_look = panel.look

    def counted(**kwargs: Any) -> dict[str, Any]:
        nonlocal looks
        looks += 1
        snapshot: dict[str, Any] = real_look(**kwargs)
        return snapshot

    panel.look = counted
    deadline = time.monotonic() + WAIT_S
    while looks < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert looks >= 5 and len(front.snapshots) == 1, (looks, len(front.snapshots))
    front.send(type="ready")  # a second view: it gets the latest snapshot at once
    assert len(front.snapshots) == 2
    panel.close()
    assert panel.wait_stopped(WAIT_S)


def test_the_front_end_closing_the_comm_stops_watching(ada: HubProcess) -> None:
    panel = TaskPanel()
    FrontEnd(panel).send(type="ready")
    assert panel.comm is not None and panel.watching
    panel.comm.handle_close({"content": {"comm_id": panel.comm.comm_id, "data": {}}})
    assert panel.wait_stopped(WAIT_S) and not panel.watching


def test_a_closed_panel_does_not_watch_again(ada: HubProcess) -> None:
    panel = TaskPanel()
    front = FrontEnd(panel)
    front.send(type="ready")
    panel.close()
    assert panel.wait_stopped(WAIT_S)
    front.send(type="ready")
    assert not panel.watching


def test_a_hub_that_goes_away_is_said_and_the_panel_recovers(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub-data", free_port())
    hub.start()
    try:
        kc.init(hub_url=hub.url, token=hub.token("ada@example.org"))
        panel = TaskPanel()
        panel.interval = 0.05
        front = FrontEnd(panel)
        front.send(type="ready")
        hub.stop()
        deadline = time.monotonic() + WAIT_S
        while panel.status != "error" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert panel.status == "error" and panel.status_message.startswith("Hub"), panel.status_message
        assert "\n" not in panel.status_message
        hub.start()
        while panel.status != "live" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert panel.status == "live" and panel.watching
        panel.close()
        assert panel.wait_stopped(WAIT_S)
    finally:
        hub.stop()


def test_the_display_has_text_for_where_widgets_do_not_render(ada: HubProcess, ip: InteractiveShell) -> None:
    kernel_tasks.serve(task_name="mean", task_function=mean)
    panel = ip.run_line_magic("kc_tasks", "")
    assert isinstance(panel, TaskPanel) and panel.project_id == kc.get_project_id() and panel.limit == 100
    assert ip.display_formatter is not None
    data, _ = ip.display_formatter.format(panel)  # type: ignore[no-untyped-call]
    assert WIDGET_MIME in data
    assert data["text/plain"].startswith(f"kachery tasks of project {panel.project_id}: 1 backend online (1 handler), 0 recent jobs")
    assert "calculation mean" in data["text/plain"]
    panel.close()
    panel = ip.run_line_magic("kc_tasks", f"{kc.get_project_id()} --limit 7")
    assert panel.limit == 7
    panel.close()


@pytest.mark.parametrize(("line", "says"), [
    ("--limit 0", "--limit 0: list at least 1 job"),
    ("--limit many", "invalid int value: 'many'"),
    ("a b", "unrecognized arguments: b"),
    ("'open", "no closing quotation"),
])
def test_kc_tasks_usage_errors_are_one_line(ip: InteractiveShell, line: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_tasks", line)
    assert says in str(info.value) and "\n" not in str(info.value).strip()


def test_kc_tasks_without_a_hub_names_the_command(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_tasks", "some-project")
    assert "KACHERY_HUB_URL" in str(info.value) and "\n" not in str(info.value)


def test_kc_tasks_of_a_project_one_is_not_a_member_of(ada: HubProcess, ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_tasks", "no-such-project")
    assert "\n" not in str(info.value) and "no-such-project" in str(info.value)


def test_a_panel_that_cannot_start_leaves_nothing_behind() -> None:
    import gc

    for kwargs in ({"project_id": "p"}, {"project_id": "p", "limit": 0}):
        with pytest.raises(kc.KacheryError):
            TaskPanel(**kwargs)
        gc.collect()  # Widget.__del__ closes it: that must not fail (warnings are errors here)
