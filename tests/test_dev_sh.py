"""``bash dev.sh start`` as a new user runs it, in a sandbox copy of the checkout.

The sandbox holds this checkout's ``dev.sh``, ``pyproject.toml`` and ``notebooks/``, and a
``.venv/bin`` of small wrappers: ``python`` and ``kachery-hub`` run this venv's, so the hub is
real; ``jupyter`` writes down its arguments and environment and exits at once, as JupyterLab
does when its user stops it. The setup stamp matches, so nothing is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="dev.sh needs bash")

VENV_BIN = Path(sys.executable).parent
FAKE_JUPYTER = """#!/usr/bin/env bash
# Stands in for JupyterLab: records how it was started, then exits as if its user stopped it.
python3 - "$@" <<'EOF' >"$(dirname "$0")/../../jupyter-run.json"
import json, os, sys
print(json.dumps({"args": sys.argv[1:], "env": dict(os.environ)}))
EOF
"""


@dataclass
class Sandbox:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / ".kachery-hub"

    def start(self, *args: str, command: str = "start", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KACHERY_", "JUPYTER"))}
        env["KACHERY_HUB_PORT"] = str(self.port)
        env["HOME"] = str(self.root / "home")  # a new user's: no ~/.kachery-cloud yet
        return subprocess.run(["bash", "dev.sh", command, *args], cwd=self.root, env=env, capture_output=True,
                               text=True, timeout=timeout)

    def jupyter_run(self) -> dict[str, object]:
        run: dict[str, object] = json.loads((self.root / "jupyter-run.json").read_text())
        return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pids_using(data: Path) -> list[int]:
    """Processes whose command line names ``data`` (the hub dev.sh started for this sandbox)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(data).encode() in cmdline:
            found.append(int(proc.name))
    return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("dev.sh", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "kachery-hub"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{VENV_BIN / name}" "$@"\n')
    (bin_dir / "jupyter").write_text(FAKE_JUPYTER)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    stamp = hashlib.sha1((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".kachery-setup-stamp").write_text(stamp + "\n")
    box = Sandbox(root, _free_port())
    try:
        yield box
    finally:
        for pid in _pids_using(box.data):  # a hub dev.sh left behind
            os.kill(pid, signal.SIGKILL)


def test_the_hub_stops_when_jupyterlab_exits_and_the_next_start_works(sandbox: Sandbox) -> None:
    first = sandbox.start()
    assert first.returncode == 0, first.stderr
    assert "unbound variable" not in first.stderr
    assert _pids_using(sandbox.data) == [], "the hub outlived JupyterLab"
    assert _port_is_free(sandbox.port)
    again = sandbox.start()
    assert again.returncode == 0, again.stderr + (sandbox.data / "serve.log").read_text()
    assert _pids_using(sandbox.data) == []


def test_jupyterlab_starts_signed_in_as_the_hub_admin(sandbox: Sandbox) -> None:
    done = sandbox.start()
    assert done.returncode == 0, done.stderr
    log = (sandbox.data / "serve.log").read_text()
    printed = re.search(r"KACHERY_HUB_URL=(\S+) KACHERY_HUB_TOKEN=(\S+)", log)
    assert printed
    env = sandbox.jupyter_run()["env"]
    assert isinstance(env, dict)
    assert env["KACHERY_HUB_URL"] == printed.group(1)
    assert env["KACHERY_HUB_TOKEN"] == printed.group(2)  # kernels sign in with it on first use
    # ...and says how to let someone else in.
    assert f"kachery-hub token create --data {sandbox.data} --user" in done.stdout


def test_jupyterlab_works_on_copies_of_the_notebooks(sandbox: Sandbox) -> None:
    assert sandbox.start().returncode == 0
    args = sandbox.jupyter_run()["args"]
    assert isinstance(args, list)
    dirs = [a.split("=", 1)[1] for a in args if a.startswith("--notebook-dir=")]
    assert len(dirs) == 1
    work = Path(dirs[0])
    assert work != sandbox.root / "notebooks" and sandbox.root in work.parents
    for original in (sandbox.root / "notebooks").glob("*.ipynb"):
        assert (work / original.name).read_bytes() == original.read_bytes()

    # What the user did in a copy survives the next start; a newer original replaces it.
    copy = work / "quickstart.ipynb"
    copy.write_text(copy.read_text().replace('"outputs": []', '"outputs": [ ]', 1))
    edited = copy.read_text()
    assert sandbox.start().returncode == 0
    assert copy.read_text() == edited
    original = sandbox.root / "notebooks" / "quickstart.ipynb"
    os.utime(original, (copy.stat().st_mtime + 10, copy.stat().st_mtime + 10))
    assert sandbox.start().returncode == 0
    assert copy.read_bytes() == original.read_bytes()

    # In the real checkout, that work folder and what JupyterLab leaves behind are ignored by git.
    relative = work.relative_to(sandbox.root)
    for path in (f"{relative}/quickstart.ipynb", "notebooks/.ipynb_checkpoints/quickstart-checkpoint.ipynb",
                 "notebooks/Untitled.ipynb", "notebooks/Untitled1.ipynb"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not ignored by git"


@pytest.mark.parametrize("notebook", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_notebooks_in_the_repository_hold_no_outputs(notebook: str) -> None:
    nb = json.loads((REPO / "notebooks" / notebook).read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"cell {i} of {notebook} was run"


def test_jupyterlab_opens_the_quickstart_and_gets_the_extra_arguments(sandbox: Sandbox) -> None:
    done = sandbox.start("--port", "8900", "--no-browser")
    assert done.returncode == 0, done.stderr
    args = sandbox.jupyter_run()["args"]
    assert isinstance(args, list)
    assert args[0] == "lab" and "--LabApp.default_url=/lab/tree/quickstart.ipynb" in args
    assert args[-3:] == ["--port", "8900", "--no-browser"]
    # ...and says where the hub is, on the port KACHERY_HUB_PORT picked, and where its data and log are.
    assert f"==> hub: http://127.0.0.1:{sandbox.port} (data: {sandbox.data}, log: {sandbox.data / 'serve.log'})" in done.stdout


def test_quickstart_runs_headless_against_a_throwaway_hub(sandbox: Sandbox) -> None:
    done = sandbox.start(command="quickstart", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"kachery-jupyter: hub http://127.0.0.1:{sandbox.port}, signed in as" in done.stdout
    assert "firing_rate answered {'n': 4, 'rate_hz': 2.0}" in done.stdout
    assert not (sandbox.root / "home" / ".kachery-cloud").exists(), "the user's own kachery directory was used"
    assert _port_is_free(sandbox.port), "the hub outlived the quickstart"
