"""Progress bars (tqdm) for big content: hashing, storing, uploading, downloading.

Bars are drawn for content of at least ``PROGRESS_THRESHOLD_BYTES`` (64 MiB); the tests lower
that to 1 MiB so that a few MiB stand for a 600 MB array. Shown in a kernel (a notebook widget)
or on a terminal (text on stderr); silent otherwise or with ``KACHERY_PROGRESS=0``.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hub_fixtures import Hub, make_hub, s3_server  # noqa: F401  (a fixture)

import kachery_core as kc
from kachery_core import _constants, _progress

MiB = 1024 * 1024
#: As shipped (the fixture below lowers it for every other test).
THRESHOLD = _constants.PROGRESS_THRESHOLD_BYTES


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KACHERY_PROGRESS", raising=False)
    monkeypatch.setattr(_constants, "PROGRESS_THRESHOLD_BYTES", 1 * MiB)


@pytest.fixture(params=["sqlite", "s3"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    # s3: the bytes go straight to the object store (presigned URLs), the hub never sees them
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


class Terminal(io.StringIO):
    """stderr as a terminal: what a person watching a script sees."""

    def isatty(self) -> bool:
        return True


def big_array() -> Any:
    return np.arange(3 * MiB // 8, dtype=np.float64)  # 3 MiB: three times the (lowered) threshold


def finished_bars(text: str) -> list[str]:
    """The names of the text bars that reached 100% in ``text`` (tqdm's ``name: 100%|...``)."""
    return sorted(set(re.findall(r"(?:^|\r|\n)([^\r\n:]+): 100%\|", text)))


def test_storing_and_sharing_a_big_array_shows_bars_named_by_its_label(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    hub.sign_in("alice", "alice@example.org")
    monkeypatch.setenv("KACHERY_PROGRESS", "1")
    capsys.readouterr()
    uri = kc.store_npy(big_array(), label="spikes.npy", cache_locally=True)
    err = capsys.readouterr().err
    assert finished_bars(err) == ["hashing spikes.npy", "uploading spikes.npy"], err
    assert "3.00M/3.00M" in err  # sizes in binary units

    shutil.rmtree(hub.use("alice") / "sha1")  # gone from this computer: loading downloads it
    np.testing.assert_array_equal(kc.load_npy(uri), big_array())
    assert finished_bars(capsys.readouterr().err) == ["downloading spikes.npy"]


def test_a_big_file_shows_bars_named_by_the_file_and_its_label(
        hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    hub.sign_in("alice", "alice@example.org")
    monkeypatch.setenv("KACHERY_PROGRESS", "1")
    path = tmp_path / "recording.dat"
    path.write_bytes(np.random.default_rng(1).bytes(3 * MiB))
    capsys.readouterr()
    kc.store_file(path, label="session 12.dat")
    assert finished_bars(capsys.readouterr().err) == ["hashing recording.dat", "uploading session 12.dat"]
    other = tmp_path / "copy.dat"
    other.write_bytes(path.read_bytes() + b"x")
    kc.store_file_local(other)
    assert finished_bars(capsys.readouterr().err) == ["storing copy.dat"]


def test_small_content_shows_no_bar(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KACHERY_PROGRESS", "1")
    kc.store_npy_local(np.arange(1000))
    assert capsys.readouterr().err == ""


def test_silent_when_no_one_watches(capsys: pytest.CaptureFixture[str]) -> None:
    # stderr is not a terminal here (pytest captures it) and there is no kernel: a script's log stays clean
    kc.store_npy_local(big_array(), label="spikes.npy")
    assert capsys.readouterr().err == ""
    assert not _progress.enabled()


def test_shown_on_a_terminal_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    kc.store_npy_local(big_array(), label="spikes.npy")
    assert finished_bars(terminal.getvalue()) == ["hashing spikes.npy"]

    terminal.seek(0)
    terminal.truncate()
    monkeypatch.setenv("KACHERY_PROGRESS", "0")
    kc.store_npy_local(big_array() + 1, label="other.npy")
    assert terminal.getvalue() == ""


@pytest.mark.parametrize(("setting", "expected"), [("0", False), ("off", False), ("1", True), ("yes", True)])
def test_the_variable_decides(monkeypatch: pytest.MonkeyPatch, setting: str, expected: bool) -> None:
    monkeypatch.setattr("sys.stderr", Terminal() if not expected else io.StringIO())
    monkeypatch.setenv("KACHERY_PROGRESS", setting)
    assert _progress.enabled() is expected


def test_the_threshold_is_64_mib_and_a_600_mb_array_shows_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_constants, "PROGRESS_THRESHOLD_BYTES", THRESHOLD)
    monkeypatch.setenv("KACHERY_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = _progress.Progress("uploading big.npy", 600_000_000)
    assert bar.shown
    bar.close()
    assert not _progress.Progress("uploading small.npy", 64 * MiB - 1).shown
    below = _progress.Progress("uploading edge.npy", 64 * MiB)
    assert below.shown
    below.close()


def test_a_kernel_is_recognised_by_its_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert _progress._kernel_shell() is None and not _progress.enabled()  # a terminal IPython is no kernel
    monkeypatch.setattr(shell, "kernel", object(), raising=False)  # as ipykernel's shell has
    assert _progress._kernel_shell() is shell and _progress.enabled()


def test_in_a_kernel_the_bar_is_a_notebook_widget_with_an_escaped_label(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    monkeypatch.setattr(_progress, "_kernel_shell", lambda: object())
    hostile = '<img src=x onerror="alert(1)">.npy'
    progress = _progress.Progress(f"uploading {hostile}", 2 * MiB)
    bar = progress._bar
    assert isinstance(bar, notebook_tqdm)
    left = bar.container.children[0]
    assert "<img" not in left.value and "&lt;img" in left.value
    progress(MiB)
    assert "<img" not in left.value
    progress(2 * MiB)
    assert not progress.shown and bar.container.children[1].bar_style == "success"
    assert capsys.readouterr().err == ""  # nothing in the pink stderr box


def test_a_failed_transfer_closes_its_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(_progress, "_kernel_shell", lambda: object())
    with pytest.raises(OSError), _progress.Progress("downloading x.npy", 2 * MiB) as progress:
        bar = progress._bar
        progress(MiB)
        raise OSError("connection reset")
    assert not progress.shown and bar.container.children[1].bar_style == "danger"


def test_a_label_cannot_drive_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with _progress.Progress("downloading \x1b[2J\x1b[31mred\rback.npy", 2 * MiB) as progress:
        progress(2 * MiB)
    assert "\x1b[2J" not in terminal.getvalue() and "\x1b[31m" not in terminal.getvalue()
    assert "downloading ?[2J?[31mred?back.npy: 100%" in terminal.getvalue()
