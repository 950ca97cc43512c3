"""Shared fixtures: every test gets its own kachery directory and a clean environment."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent

# Real servers shared by the whole session (JupyterLab, Chromium, the OpenID provider),
# registered once so that every module gets the same ones.
pytest_plugins = ["e2e.servers"]

_KACHERY_ENV = (
    "KACHERY_CLOUD_DIR",
    "KACHERY_CLOUD_PROJECT",
    "KACHERY_CLOUD_EPHEMERAL",
    "KACHERY_HUB_URL",
    "KACHERY_HUB_TOKEN",
    "KACHERY_PROGRESS",
)


@pytest.fixture(autouse=True)
def kachery_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh KACHERY_CLOUD_DIR (and HOME) so no test touches the real ~/.kachery-cloud."""
    for name in _KACHERY_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    d = tmp_path / "kachery-cloud"
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(d))
    return d


@pytest.fixture
def ip(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """A real IPython shell with kachery_jupyter loaded (its load line already read)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # its SQLite file would live in a test's temporary HOME
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "kachery_jupyter")
    capsys.readouterr()
    yield shell
    shell.user_ns.clear()


def in_own_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread with no event loop: the browser tests keep one running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end (in a thread of its own, see :func:`in_own_thread`)."""
    return in_own_thread(asyncio.run, coro)


def run_python(code: str, *, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the current environment (plus ``env``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=check, timeout=300
    )


def count_hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the content sha1 hashes from now on (kachery_core hashes through ``hashlib.sha1``);
    not the paths the hash cache names its entries by (the sha1 of a path of a few hundred bytes)."""
    real = hashlib.sha1
    hashed: list[int] = []

    class Counting:
        def __init__(self, data: Any = b"", **kwargs: Any) -> None:
            self._h = real(data, **kwargs)
            self._count(data)

        def update(self, data: Any) -> None:
            self._count(data)
            self._h.update(data)

        def _count(self, data: Any) -> None:
            if memoryview(data).nbytes > 4096:
                hashed.append(memoryview(data).nbytes)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(hashlib, "sha1", Counting)
    return hashed
