"""The Colab path, as far as it can be followed without Colab: a real IPython shell and a real hub
process, with Colab's modules stood in for.

- ``google.colab.output``: anywidget checks ``"google.colab.output" in sys.modules``; it then calls
  ``enable_custom_widget_manager()`` and names ``_widgets._installed_url`` in each widget's display
  metadata, which is how Colab's front end finds the widget manager. Every kachery widget (and the
  displays that wrap one) must keep that metadata.
- ``google.colab.userdata``: the sign-in panel reads the Colab secret ``KACHERY_HUB_TOKEN`` and signs
  in by itself; a secret not granted to the notebook leaves the one-click panel; a dead one says so.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import kachery_core as kc
from hub_process import HubProcess, real_hub  # noqa: F401  (a fixture)

pytest.importorskip("anywidget")

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MANAGER_URL = "https://ssl.gstatic.com/colaboratory-static/widgets/colab-cdn-widget-manager/b3e629b1971e1542/manager.min.js"


class NotebookAccessError(Exception):
    """What Colab's ``userdata.get`` raises when the notebook was not granted the secret."""


@dataclass
class Colab:
    secrets: dict[str, str] = field(default_factory=dict)
    granted: bool = True
    manager_enabled: int = 0

    def get(self, name: str) -> str:
        if not self.granted:
            raise NotebookAccessError(name)
        return self.secrets[name]  # Colab raises SecretNotFoundError, a KeyError-like, for a missing one

    def enable_custom_widget_manager(self) -> None:
        self.manager_enabled += 1


@pytest.fixture
def colab(real_hub: HubProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Colab]:
    """Colab's modules in sys.modules, and a kernel that knows the hub (as `%env` or os.environ would set)."""
    from anywidget import _util

    state = Colab()
    google = types.ModuleType("google")
    package = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    userdata = types.ModuleType("google.colab.userdata")
    output.enable_custom_widget_manager = state.enable_custom_widget_manager  # type: ignore[attr-defined]
    output._widgets = types.SimpleNamespace(_installed_url=MANAGER_URL)  # type: ignore[attr-defined]
    userdata.get = state.get  # type: ignore[attr-defined]
    userdata.NotebookAccessError = NotebookAccessError  # type: ignore[attr-defined]
    package.output = output  # type: ignore[attr-defined]
    package.userdata = userdata  # type: ignore[attr-defined]
    google.colab = package  # type: ignore[attr-defined]
    for name, module in (("google", google), ("google.colab", package), ("google.colab.output", output),
                         ("google.colab.userdata", userdata)):
        monkeypatch.setitem(sys.modules, name, module)
    _util.enable_custom_widget_manager_once.cache_clear()  # anywidget does it once per process
    monkeypatch.setenv("KACHERY_HUB_URL", real_hub.url)
    try:
        yield state
    finally:
        _util.enable_custom_widget_manager_once.cache_clear()


def colab_metadata(shown: Any) -> dict[str, Any]:
    data, metadata = shown
    assert WIDGET_VIEW in data, "shown as a widget"
    assert "text/plain" in data
    return dict(metadata)


EXPECTED = {WIDGET_VIEW: {"colab": {"custom_widget_manager": {"url": MANAGER_URL}}}}


def test_the_colab_secret_signs_in_and_every_widget_names_colab_s_widget_manager(
    colab: Colab, real_hub: HubProcess, ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    colab.secrets["KACHERY_HUB_TOKEN"] = real_hub.token("colab@example.org")
    from kachery_jupyter._magics import status_line

    assert status_line().endswith("not signed in: run %kc_login")

    panel = ip.run_line_magic("kc_login", "")
    assert (panel.state, panel.email) == ("signed_in", "colab@example.org"), panel.message
    assert colab.manager_enabled == 1, "anywidget turned Colab's custom widget manager on"
    assert colab_metadata(panel._repr_mimebundle_()) == EXPECTED

    ip.user_ns["arr"] = [1, 2, 3]
    stored = ip.run_line_magic("kc_store", "arr")
    assert stored.hub_url == real_hub.url  # stored on the hub, not only in the Colab VM
    assert "text/html" in stored._repr_mimebundle_()

    feed = kc.create_feed(label="colab run")
    feed.append_message({"epoch": 0})
    viewer = ip.run_line_magic("kc_feed", feed.uri)
    assert colab_metadata(viewer._repr_mimebundle_()) == EXPECTED
    from kachery_jupyter._feedviewer import feed_mimebundle

    data, metadata = feed_mimebundle(feed)
    assert metadata == EXPECTED and data["text/plain"].startswith(f"kachery feed {feed.uri}")

    browser = ip.run_line_magic("kc_browse", "")
    assert colab_metadata(browser._repr_mimebundle_()) == EXPECTED

    tasks = ip.run_line_magic("kc_tasks", "")
    assert colab_metadata(tasks._repr_mimebundle_()) == EXPECTED
    assert colab.manager_enabled == 1, "once per kernel"


def test_a_secret_not_granted_leaves_the_one_click_panel(colab: Colab, real_hub: HubProcess, ip: Any) -> None:
    colab.secrets["KACHERY_HUB_TOKEN"] = real_hub.token("colab@example.org")
    colab.granted = False
    panel = ip.run_line_magic("kc_login", "")
    assert (panel.state, panel.message) == ("signed_out", "")
    assert kc.get_client_info()["signed_in"] is False


def test_no_secret_leaves_the_one_click_panel(colab: Colab, ip: Any) -> None:
    panel = ip.run_line_magic("kc_login", "")
    assert panel.state == "signed_out"


def test_a_dead_secret_says_which_secret_was_refused(colab: Colab, ip: Any) -> None:
    colab.secrets["KACHERY_HUB_TOKEN"] = "khub_this-is-not-a-token"
    panel = ip.run_line_magic("kc_login", "")
    assert panel.state == "refused"
    assert "the Colab secret KACHERY_HUB_TOKEN" in panel.message
