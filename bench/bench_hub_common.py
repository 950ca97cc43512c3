"""Shared by the ``bench_hub_*`` benchmarks: a real hub process, a bare uvicorn anchor, percentiles.

Not a benchmark itself. Every server listens on a free 127.0.0.1 port, is started
here as a child process and is stopped by its PID (:func:`stop`).

The anchor (:mod:`bench_hub_anchor`) runs as ``python -m uvicorn --factory``
with uvicorn's defaults, as ``kachery-hub serve`` does.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
KIB = 2**10
MIB = 2**20
HUB_CLI = str(Path(sys.executable).parent / "kachery-hub")
START_TIMEOUT_S = 30.0


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
    """A ``kachery-hub serve`` process (embedded default: SQLite + folder under ``data``)."""

    data: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cmd = [HUB_CLI, "serve", "--data", str(self.data), "--port", str(self.port)]
        # Its output goes to a file: an unread pipe would block a chatty server.
        with open(self.data.parent / f"{self.data.name}.log", "w+") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
            self.admin_token = _printed_token(log)
        if not self.admin_token:
            stop(self.proc)
            raise RuntimeError("kachery-hub serve printed no sign-in token")
        wait_http(self.url + "/api/health", self.proc)

    def token(self, email: str) -> str:
        """A sign-in token for ``email`` from ``kachery-hub token create`` (the headless way)."""
        cmd = [HUB_CLI, "token", "create", "--data", str(self.data), "--user", email]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


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


# ---------------------------------------------------------------- the anchor


@dataclass
class Anchor:
    """The bare uvicorn server of :func:`anchor_app`, serving files from ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE), "bench_hub_anchor:anchor_app",
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        env = {**os.environ, "BENCH_ANCHOR_ROOT": str(self.root)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/health", self.proc)

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


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
