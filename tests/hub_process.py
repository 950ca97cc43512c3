"""A real ``kachery-hub serve`` process on a free 127.0.0.1 port, stopped by its PID.

``HubProcess`` starts one (reading the sign-in URL it prints) and makes tokens
with ``kachery-hub token create``; the ``real_hub`` fixture gives a test one on
the embedded default. Import the fixture into a test module by name.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from kachery_core import _hub

HUB_CMD = [sys.executable, "-c", "import sys; from kachery_hub._cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    def __init__(self, data: Path, port: int, *extra_args: str, public_url: str | None = None) -> None:
        self.data = data
        self.extra_args = list(extra_args)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # serve --public-url: the hub then prints it (normalized) as its URL, and signatures are checked against it.
        self.public_url = public_url
        self.proc: subprocess.Popen[str] | None = None
        self.admin_token = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*HUB_CMD, "serve", "--data", str(self.data), "--port", str(self.port), *self.extra_args,
             *(["--public-url", self.public_url] if self.public_url else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"KACHERY_HUB_URL=(\S+) KACHERY_HUB_TOKEN=(\S+)", line)
            if m:
                assert m.group(1) == self.printed_url
                self.admin_token = m.group(2)
                break
        assert self.admin_token, "".join(lines)
        assert any(f"{self.printed_url}/?token={self.admin_token}" in x for x in lines), lines
        # Keep reading what it prints: a hub that logs a lot would otherwise fill the pipe and stall.
        self.log: collections.deque[str] = collections.deque(lines, maxlen=2000)
        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout, self.log), daemon=True)
        self._drainer.start()
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                time.sleep(0.05)
        raise AssertionError("hub did not answer /api/health")

    @staticmethod
    def _drain(stdout: Any, log: collections.deque[str]) -> None:
        try:
            for line in stdout:
                log.append(line)
        except (OSError, ValueError):  # closed by stop()
            pass

    @property
    def printed_url(self) -> str:
        """The URL the hub prints for clients: its first public URL."""
        return self.public_url.rstrip("/") if self.public_url else self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(10)  # the process ended: it reads to the end of what was printed
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def token(self, email: str) -> str:
        out = subprocess.run([*HUB_CMD, "token", "create", "--data", str(self.data), "--user", email, *self.extra_args],
                             capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()


@pytest.fixture
def real_hub(tmp_path: Path) -> Iterator[HubProcess]:
    with running(HubProcess(tmp_path / "hub-data", free_port())) as hub:
        yield hub


@contextmanager
def running(hub: HubProcess, env: dict[str, str] | None = None) -> Iterator[HubProcess]:
    """``hub`` started (with ``env`` added to its environment) and stopped at the end; then this
    process forgets its hubs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        hub.start()
    try:
        yield hub
    finally:
        hub.stop()
        forget_hubs()


def forget_hubs() -> None:
    """Drop this process's hub connections and choices (a test's hubs are gone)."""
    _hub.close_connections()
    _hub._chosen_url.clear()
    _hub._chosen_token.clear()
    _hub._env_token_hub.clear()
    _hub._me_cache.clear()
