"""Shared by the hub benchmarks: a real hub process, a bare uvicorn anchor, percentiles, child processes, py-spy.

Not a benchmark itself. Every server listens on a free 127.0.0.1 port, is started
here as a child process and is stopped by its PID (:func:`stop`).

The anchor (:mod:`bench_hub_anchor`) runs as ``python -m uvicorn --factory``
with uvicorn's defaults, as ``kachery-hub serve`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
KIB = 2**10
MIB = 2**20
HUB_CLI = str(Path(sys.executable).parent / "kachery-hub")
START_TIMEOUT_S = 30.0
CHILD_TIMEOUT_S = 900.0
EMAIL = "bench@example.org"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; bounded, and fails fast if ``proc`` died."""
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit within 30 s."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the real hub


@dataclass
class Hub:
    """A ``kachery-hub serve`` process (embedded default: SQLite + folder under ``data``).

    ``env``: variables added to its environment (e.g. a shorter task lease).
    """

    data: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    admin_token: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli_args(self) -> list[str]:
        """Where its data is (subclasses add a database): for ``serve`` and ``token create``."""
        return ["--data", str(self.data)]

    def start(self) -> None:
        cmd = [HUB_CLI, "serve", *self.cli_args(), "--port", str(self.port)]
        self.data.parent.mkdir(parents=True, exist_ok=True)
        # Its output goes to a file: an unread pipe would block a chatty server.
        with open(self.data.parent / f"{self.data.name}.log", "w+") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                         env={**os.environ, **self.env})
            self.admin_token = _printed_token(log)
        if not self.admin_token:
            stop(self.proc)
            raise RuntimeError(f"kachery-hub serve printed no sign-in token; see {self.data}.log")
        wait_http(self.url + "/api/health", self.proc)

    def token(self, email: str) -> str:
        """A sign-in token for ``email`` from ``kachery-hub token create`` (the headless way)."""
        cmd = [HUB_CLI, "token", "create", *self.cli_args(), "--user", email]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def print_log_tails(folder: Path, lines: int = 40) -> None:
    """The end of every ``*.log`` under ``folder``: the servers' logs say why a benchmark failed."""
    for log in sorted(folder.rglob("*.log")):
        print(f"\n--- end of {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def _printed_token(log: IO[str]) -> str:
    """The admin token ``kachery-hub serve`` prints once it is up ("" if it does not in time)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"KACHERY_HUB_URL=(\S+) KACHERY_HUB_TOKEN=(\S+)", log.read())
        if m:
            return m.group(2)
        time.sleep(0.05)
    return ""


def client_env(client_dir: Path, hub_url: str) -> dict[str, str]:
    """The environment of a client computer: its own KACHERY_CLOUD_DIR, no inherited kachery settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
    return {**env, "KACHERY_CLOUD_DIR": str(client_dir), "KACHERY_HUB_URL": hub_url}


def sign_in(client_dir: Path, hub_url: str, token: str) -> None:
    """Sign a fresh client directory in, in a process of its own (as a user would, once)."""
    code = "import sys, kachery_core as kc; kc.init(hub_url=sys.argv[1], token=sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, hub_url, token], env=client_env(client_dir, hub_url),
                   check=True, capture_output=True, timeout=60)


def signed_in_env(work: Path, name: str, hub: Hub, email: str = EMAIL) -> dict[str, str]:
    """A fresh client directory signed in to ``hub`` as ``email``; its environment."""
    folder = work / "clients" / name
    folder.mkdir(parents=True)
    sign_in(folder, hub.url, hub.token(email))
    return client_env(folder, hub.url)


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1e3 for x in latencies_s]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "mean_ms": sum(ms) / len(ms),
            "max_ms": max(ms), "n": len(ms)}


# ---------------------------------------------------------------- the anchor


def start_uvicorn(app: str, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``app`` (``module:factory`` of a module here) on uvicorn with its defaults, answering ``/health``."""
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE), app,
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


@dataclass
class BareApp:
    """A bare FastAPI app (``module:factory`` of a module here) on uvicorn: the anchor of a benchmark."""

    app: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_uvicorn(self.app, self.port)

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


class Anchor(BareApp):
    """The bare uvicorn server of :func:`anchor_app`, serving files from ``root``."""

    def __init__(self, root: Path) -> None:
        super().__init__("bench_hub_anchor:anchor_app")
        self.root = root

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = start_uvicorn(self.app, self.port, {"BENCH_ANCHOR_ROOT": str(self.root)})


# ---------------------------------------------------------------- PostgreSQL


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster, started as the tests start one (tests/hub_fixtures.py); yields the
    URL of its ``postgres`` database."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from hub_fixtures import PG_BIN, _run_postgres

    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"PostgreSQL binaries not found in {PG_BIN}; use --skip-postgres")
    with _run_postgres() as server:
        yield f"{server}/postgres"


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100): a value that was really measured."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def proc_status_kib(pid: int | str, name: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def reset_peak_kib(pid: int | str) -> int | None:
    """Reset ``pid``'s VmHWM to its current RSS and return that RSS (KiB); None where Linux refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return None
    return proc_status_kib(pid, "VmRSS")


# ---------------------------------------------------------------- child processes, py-spy


@dataclass
class Runner:
    """Starts child processes (``python CHILD ROLE ARGS_JSON RESULT_JSON``, as :mod:`_feed_child`
    and :mod:`_task_child` take them); with ``profile``, under py-spy, collecting their samples."""

    work: Path
    child: str
    profile: bool = False
    profiles: dict[str, Path] = field(default_factory=dict)
    _count: int = 0

    def _cmd(self, role: str, args: dict[str, Any], result: Path, label: str | None) -> list[str]:
        cmd = [sys.executable, self.child, role, json.dumps(args), str(result)]
        if self.profile and label:
            out = self.work / f"profile-{len(self.profiles)}.txt"
            self.profiles[label] = out
            return [PY_SPY, "record", "--format", "raw", "--rate", "250", "--nonblocking", "-o", str(out), "--", *cmd]
        return cmd

    def _result_path(self) -> Path:
        self._count += 1
        return self.work / f"result-{self._count}.json"

    def run(self, role: str, args: dict[str, Any], env: dict[str, str] | None = None,
            profile_label: str | None = None) -> dict[str, Any]:
        result = self._result_path()
        subprocess.run(self._cmd(role, args, result, profile_label), env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=CHILD_TIMEOUT_S)
        out: dict[str, Any] = json.loads(result.read_text())
        return out

    def spawn(self, role: str, args: dict[str, Any], env: dict[str, str] | None = None,
              profile_label: str | None = None) -> tuple[subprocess.Popen[str], Path]:
        """Start a child that prints ``ready`` once set up; return it (stdout still open) and its result path."""
        result = self._result_path()
        proc = subprocess.Popen(self._cmd(role, args, result, profile_label), env=env,
                                stdout=subprocess.PIPE, text=True)
        try:
            wait_line(proc, "ready", 60, role)
        except BaseException:
            stop(proc)
            raise
        return proc, result

    def pair(self, follow: tuple[str, dict[str, Any], dict[str, str] | None],
             send: tuple[str, dict[str, Any], dict[str, str] | None], profile_label: str | None = None) -> dict[str, Any]:
        """Start the follower, wait for its ``ready``, run the sender, return the follower's result."""
        role, args, env = follow
        proc, result = self.spawn(role, args, env, profile_label)
        try:
            self.run(*send)
            if proc.wait(timeout=CHILD_TIMEOUT_S) != 0:
                raise RuntimeError(f"{role} exited with {proc.returncode}")
        finally:
            stop(proc)
        out: dict[str, Any] = json.loads(result.read_text())
        return out


def wait_line(proc: subprocess.Popen[str], word: str, timeout: float, what: str) -> str:
    """Read ``proc``'s stdout until a line starting with ``word``; return the rest of that line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:  # py-spy, when it runs the child, may print first
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else ""
        if line.split(" ", 1)[0].strip() == word:
            return line[len(word):].strip()
        if not line:
            raise RuntimeError(f"{what} did not print {word!r} within {timeout:g} s")


@contextmanager
def sampled(runner: Runner, label: str, pid: int) -> Iterator[None]:
    """py-spy sampling ``pid`` (a hub) for the block, when profiling."""
    if not runner.profile:
        yield
        return
    out = runner.work / f"profile-{len(runner.profiles)}.txt"
    runner.profiles[label] = out
    proc = subprocess.Popen([PY_SPY, "record", "--format", "raw", "--rate", "250", "--nonblocking", "--pid", str(pid),
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # py-spy attaches
        yield
    finally:
        os.kill(proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(proc)


# Leaf frames py-spy samples while a thread waits: a parked worker thread, the event loop in epoll.
IDLE = ("Condition.wait (threading.py)", "Runner.run (runners.py)")
_FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")


def hotspots(path: Path, top: int = 12) -> list[str]:
    """The functions with the most samples of their own, and the most samples under them, from py-spy's raw output."""
    if not path.exists():
        return [f"(no samples in {path.name})"]
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            frames.append(f"{m.group(1)} ({Path(m.group(2)).name})" if m else frame)
        own[frames[-1]] += n
        for f in set(frames):
            under[f] += n
    if not total:
        return ["(no samples)"]
    idle = sum(own.pop(f, 0) for f in IDLE)
    lines = [f"{total} samples, {100 * idle / total:.0f}% of them idle (parked worker threads, event loop in epoll); "
             "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  time under (inclusive):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in under.most_common(top + 8)]
    return lines
