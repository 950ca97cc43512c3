"""Every notebook in notebooks/ runs top to bottom in a real kernel."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "notebooks"))
from run import execute, text_of  # noqa: E402

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)


@pytest.fixture
def hub_for_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real hub process; the kernel finds it (and a sign-in token) in its environment."""
    from hub_process import HubProcess, free_port

    hub = HubProcess(tmp_path / "hub-data", free_port())
    hub.start()
    monkeypatch.setenv("KACHERY_HUB_URL", hub.url)
    monkeypatch.setenv("KACHERY_HUB_TOKEN", hub.token("scientist@example.org"))
    try:
        yield
    finally:
        hub.stop()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, kachery_dir: Path, hub_for_notebooks: None) -> None:
    nb = execute(path)
    text = text_of(nb)
    assert "Traceback" not in text
    if path.name == "quickstart.ipynb":
        check_quickstart(nb, text)
        assert (kachery_dir / "private.pem").exists(), "the kernel used the test's KACHERY_CLOUD_DIR"
    if path.name == "browsing.ipynb":
        assert _widgets_shown(nb) == ["ProjectBrowser"]
        assert "23 files in project p" in text
        assert re.search(r"^ \* browsing demo \(p[0-9a-f]+\): admin$", text, re.M), "the browser opened on the project"
        assert "['experiments/M12/latest', 'experiments/M12/notes']" in text
        assert "collaborator@example.org read" in text
    if path.name == "feeds.ipynb":
        assert "first message is number 0" in text and "a batch got [1, 2, 3]" in text
        for step in range(3):  # the other process was woken for each message, in order
            assert f"other computer got {step} after" in text
        assert "the follower exited with 0" in text
        assert "3 scientist@example.org {'epoch': 3, 'loss': 0.25}" in text
        assert "FeedNotFoundError - feed 'f000" in text and "FeedMessageError - Invalid feed message at message['when']" in text
        assert "12 messages; the viewer above" in text
    if path.name == "tasks.ipynb":
        assert "serving calculation firing_rate(spike_times, duration) for project" in text
        assert "first request: {'n': 4, 'rate_hz': 2.0}" in text and "second request: {'n': 4, 'rate_hz': 2.0}" in text
        assert "cached: {'n': 4, 'rate_hz': 2.0}" in text
        assert "TaskError: ValueError - unknown unit 'furlong'" in text
        assert "TaskTimeoutError: task 'nobody_serves_this' (calculation) did not finish within 2 s: no backend took it" in text
        assert "rates: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]" in text
        assert "1 backend online (2 handlers)" in text
        assert "[('check_units', 'error'), ('firing_rate', 'finished'), ('nobody_serves_this', 'cancelled')]" in text
    if path.name == "sharing.ipynb":
        assert "signed in as scientist@example.org" in text
        assert "the other computer loaded (1000,)" in text
        assert "'email': 'collaborator@example.org'" in text and "'role': 'read'}" in text


def _widgets_shown(nb: nbformat.NotebookNode) -> list[str]:
    """The anywidget classes the notebook's outputs show, in order (by the id anywidget gives them)."""
    states = {}
    for key, state in nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}).items():
        states[key] = state.get("state", {}).get("_anywidget_id", "")
    shown = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view:
                shown.append(states.get(view["model_id"], "?").rsplit(".", 1)[-1])
    return shown


def check_quickstart(nb: nbformat.NotebookNode, text: str) -> None:
    assert "kachery-jupyter: hub http://127.0.0.1:" in text and "signed in as scientist@example.org" in text
    # the sign-in panel, the project browser, the feed viewer and the task panel, each a live widget
    assert _widgets_shown(nb) == ["LoginWidget", "ProjectBrowser", "FeedViewer", "TaskPanel"]
    html = [o.data["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any('class="kachery-uri"' in h and "spikes.npy" in h for h in html), "%kc_store shows the URI richly"
    assert "loaded (1000,) int64 identical: True" in text
    assert "deterministic: sha1://" in text and "meta_again = {'rate_hz': 30000, 'subject': 'M12', 'trials': [1, 2, 3]}" in text
    assert re.search(r"latest is sha1://[0-9a-f]{40}\?label=spikes\.npy", text)
    assert "4 messages; the viewer above" in text
    assert "serving calculation firing_rate(spike_times, duration) for project" in text
    assert "firing_rate answered {'n': 4, 'rate_hz': 2.0}" in text
    assert "UnknownURISchemeError - " in text and "InvalidURIError - " in text
