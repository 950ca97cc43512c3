"""``%%kc_task`` and the progress display, against a real hub process.

A real Jupyter kernel (started with jupyter_client, as nbclient starts one) serves
the cell's function; a separate Python process requests it. The usage errors and
the progress line are checked in an in-process IPython shell.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)
from kachery_jupyter._taskmagic import kernel_tasks, progress_html, progress_text

WAIT_S = 60


class Kernel:
    """A real IPython kernel in its own process; ``run(code)`` returns what the cell printed or showed."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", env={**os.environ, **env})

    def run(self, code: str) -> tuple[str, str]:
        """The cell's output text and its status (``ok`` or ``error``)."""
        out: list[str] = []

        def collect(msg: dict[str, Any]) -> None:
            content = msg["content"]
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data", "update_display_data"):
                out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                out.append(f"{content['ename']}: {content['evalue']}\n")

        reply = self.client.execute_interactive(code, output_hook=collect, timeout=WAIT_S)
        return "".join(out), reply["content"]["status"]

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


@pytest.fixture
def ada(real_hub: HubProcess) -> Iterator[HubProcess]:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    kc.set_project_member(kc.get_project_id(), "bob@example.org", "write")
    try:
        yield real_hub
    finally:
        kernel_tasks.stop()


def request_elsewhere(hub: HubProcess, tmp_path: Path, task_type: str, name: str, task_input: dict[str, Any]) -> str:
    """Another computer (bob, a writer) requests the task; what it printed."""
    code = (
        "import kachery_core as kc\n"
        f"kc.init(hub_url={hub.url!r}, token={hub.token('bob@example.org')!r})\n"
        "try:\n"
        f"    print('result', repr(kc.request_task(task_type={task_type!r}, task_name={name!r}, task_input={task_input!r},"
        f" timeout_sec=60, project_id={kc.get_project_id()!r})))\n"
        "except kc.TaskError as e:\n"
        "    print('TaskError', e.remote_type, e.remote_message)\n"
        "    print(e.remote_traceback)\n"
    )
    return run_python(code, env={"KACHERY_CLOUD_DIR": str(tmp_path / "other-computer")}).stdout


MEAN_RATE = """%%kc_task mean_rate
import statistics

def mean_rate(spike_times, duration, scale=1.0):
    return scale * len(spike_times) / duration
"""


def test_a_cell_served_from_a_real_kernel_answers_another_process(ada: HubProcess, tmp_path: Path) -> None:
    kernel = Kernel({
        "KACHERY_CLOUD_DIR": str(tmp_path / "kernel"),
        "KACHERY_HUB_URL": ada.url,
        "KACHERY_HUB_TOKEN": ada.token("ada@example.org"),
    })
    try:
        out, status = kernel.run("%load_ext kachery_jupyter")
        assert status == "ok", out
        out, status = kernel.run(MEAN_RATE)
        project = kc.get_project_id()
        assert status == "ok", out
        assert out.startswith(f"serving calculation mean_rate(spike_times, duration, scale=1.0) for project {project} "
                              "from this kernel (backend "), out
        assert out.count("\n") == 1, "one line"

        # The kernel stays usable while it serves.
        assert kernel.run("print(1 + 1)") == ("2\n", "ok")
        assert "result 1.5" in request_elsewhere(ada, tmp_path, "calculation", "mean_rate", {"spike_times": [1, 2, 3], "duration": 2})
        assert kernel.run("print(statistics.mean([1, 2]))") == ("1.5\n", "ok"), "the cell ran in the notebook's namespace"

        # Running the cell again with a new body replaces the handler (a new input: the old answer is cached).
        out, status = kernel.run(MEAN_RATE.replace("scale * len", "10 * scale * len"))
        assert status == "ok" and out.startswith("replaced: now serving calculation mean_rate("), out
        assert "result 10.0" in request_elsewhere(ada, tmp_path, "calculation", "mean_rate", {"spike_times": [1], "duration": 1})
        assert "result 1.5" in request_elsewhere(ada, tmp_path, "calculation", "mean_rate", {"spike_times": [1, 2, 3], "duration": 2}), \
            "a calculation already done is answered from the cache"

        # An action, and a handler that raises: the requester gets the cell's lines in the traceback.
        out, status = kernel.run("%%kc_task shout --type action\ndef shout(text):\n    if not text:\n        raise ValueError('nothing to shout')\n    return text.upper()\n")
        assert status == "ok" and out.startswith("serving action shout(text) for project"), out
        assert "result 'HI'" in request_elsewhere(ada, tmp_path, "action", "shout", {"text": "hi"})
        failed = request_elsewhere(ada, tmp_path, "action", "shout", {"text": ""})
        assert "TaskError ValueError nothing to shout" in failed
        assert "raise ValueError('nothing to shout')" in failed, failed

        backends = kc.list_task_backends()
        assert len(backends) == 1, "one backend per kernel and project"
        assert sorted(h["task_name"] for h in backends[0]["handlers"]) == ["mean_rate", "shout"]
    finally:
        kernel.stop()


# ---------------------------------------------------------------- in-process shell


def test_served_in_the_background_and_replaced(ada: HubProcess, ip: InteractiveShell, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("kc_task", "double --type action", "def double(x):\n    return 2 * x\n")  # type: ignore[no-untyped-call]
    line = capsys.readouterr().out
    assert line.startswith("serving action double(x) for project ") and line.count("\n") == 1
    assert "result 6" in request_elsewhere(ada, tmp_path, "action", "double", {"x": 3})
    ip.run_cell_magic("kc_task", "double --type action", "def double(x):\n    return 3 * x\n")  # type: ignore[no-untyped-call]
    assert capsys.readouterr().out.startswith("replaced: now serving action double(x)")
    assert "result 9" in request_elsewhere(ada, tmp_path, "action", "double", {"x": 3})
    (backend,) = kernel_tasks.backends().values()
    assert set(backend.handlers) == {"double"}


def test_a_second_handler_is_announced_to_the_hub_at_once(ada: HubProcess, ip: InteractiveShell) -> None:
    """Not when the backend's long poll for jobs next returns: the panel, and requests, know at once."""
    ip.run_cell_magic("kc_task", "first", "def first():\n    return 1\n")  # type: ignore[no-untyped-call]
    ip.run_cell_magic("kc_task", "second --type action", "def second():\n    return 2\n")  # type: ignore[no-untyped-call]
    (backend,) = kc.list_task_backends()
    assert sorted((h["task_name"], h["task_type"]) for h in backend["handlers"]) == [("first", "calculation"), ("second", "action")]


def test_a_versioned_name_serves_the_function_named_by_function(ada: HubProcess, ip: InteractiveShell, tmp_path: Path) -> None:
    ip.run_cell_magic("kc_task", "lab.double.2 --function double", "def double(x):\n    return 2 * x\n")  # type: ignore[no-untyped-call]
    assert "result 8" in request_elsewhere(ada, tmp_path, "calculation", "lab.double.2", {"x": 4})


@pytest.mark.parametrize(("line", "cell", "says"), [
    ("", "def f(): pass", "the following arguments are required: name"),
    ("f --type job", "def f(): pass", "argument --type: invalid choice: 'job'"),
    ("f --typo", "def f(): pass", "unrecognized arguments: --typo"),
    ("lab.f.2", "def f(): pass", "'lab.f.2' is not a Python function name: add --function NAME"),
    ("f", "x = 1", "the cell does not define a function f: write def f(...) in it"),
    ("f", "f = 3", "the cell does not define a function f"),
    ("f", "def f():\n    pass\n1 / 0", "the cell raised ZeroDivisionError: f is not served"),
    ("'f", "def f(): pass", "no closing quotation"),
    ("bad/name --function f", "def f(): pass", "bad/name"),
])
def test_kc_task_usage_errors_are_one_line(ada: HubProcess, ip: InteractiveShell, line: str, cell: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("kc_task", line, cell)  # type: ignore[no-untyped-call]
    assert says in str(info.value) and "\n" not in str(info.value).strip()
    assert kernel_tasks.backends() == {}, "nothing is served"


def test_a_function_defined_before_is_not_served_by_a_cell_that_does_not_define_it(ada: HubProcess, ip: InteractiveShell) -> None:
    ip.run_cell("def f():\n    return 1\n")  # type: ignore[no-untyped-call]
    with pytest.raises(UsageError, match="the cell does not define a function f"):
        ip.run_cell_magic("kc_task", "f", "y = 2")  # type: ignore[no-untyped-call]


def test_kc_task_without_a_hub_names_the_command(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("kc_task", "f", "def f(): pass")  # type: ignore[no-untyped-call]
    assert "KACHERY_HUB_URL" in str(info.value) and "\n" not in str(info.value)


def test_a_reader_cannot_serve(real_hub: HubProcess, ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))["default_project_id"]
    kc.set_project_member(project, "rita@example.org", "read")
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "rita"))
    kc.init(hub_url=real_hub.url, token=real_hub.token("rita@example.org"))
    try:
        with pytest.raises(UsageError) as info:
            ip.run_cell_magic("kc_task", f"f --project {project}", "def f(): pass")  # type: ignore[no-untyped-call]
        assert "\n" not in str(info.value) and ("permission" in str(info.value).lower() or "write" in str(info.value))
        assert kernel_tasks.backends() == {}, "nothing is left running"
    finally:
        kernel_tasks.stop()


# ---------------------------------------------------------------- progress


def test_the_progress_line(ip: InteractiveShell) -> None:
    base = {"job_id": "j1", "task_name": "mean_rate"}
    assert progress_text({**base, "status": "pending"}) == "mean_rate: waiting for a backend"
    assert progress_text({**base, "status": "started", "progress": {"fraction": 0.4, "message": "chunk 4\nmore"}}) == "mean_rate: started 40% chunk 4"
    assert progress_text({**base, "status": "started", "attempts": 2}) == "mean_rate: started (attempt 2)"
    assert progress_text({**base, "status": "error", "error": {"type": "ValueError", "message": "bad x"}}) == "mean_rate: error ValueError: bad x"
    evil = {**base, "task_name": "<img src=x>", "status": "started", "progress": {"fraction": 0.5}}
    assert "<img" not in progress_html(evil) and 'value="0.5000"' in progress_html(evil)


def test_a_request_from_the_notebook_shows_its_progress(ada: HubProcess, ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    def halves(n: int) -> int:
        kc.report_task_progress(fraction=0.5, message="half way")
        return n

    kernel_tasks.serve(task_name="halves", task_function=halves)
    ip.user_ns["kc"] = kc
    capsys.readouterr()
    result = ip.run_cell(  # type: ignore[no-untyped-call]
        "import kachery_jupyter\n"
        "r = kc.request_task(task_type='calculation', task_name='halves', task_input={'n': 5}, progress=kachery_jupyter.task_progress)\n"
    )
    assert result.success and ip.user_ns["r"] == 5
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("halves: ")]
    assert lines and lines[-1] == "halves: finished", lines
    assert len(lines) == len(set(lines)), "a line is redrawn only when it changes"
