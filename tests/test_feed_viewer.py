"""The live feed viewer's kernel side against a real hub process: following, batches, closing, appending.

The front end is stood in for by calling the widget's message handler with the
messages js/feedviewer.js sends, and by recording what the widget sends back;
the other computer by a separate Python process appending to the feed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)
from kachery_jupyter import FeedViewer
from kachery_jupyter._feedviewer import feed_mimebundle

WAIT_S = 30.0  # a bound for waits that end as soon as the awaited thing happens

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class FrontEnd:
    """What the widget sends, as the browser would receive it."""

    def __init__(self, widget: FeedViewer) -> None:
        self.widget = widget
        self.batches: list[list[list[Any]]] = []
        self.answers: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        widget.send = self._receive

    def _receive(self, content: dict[str, Any], buffers: Any = None) -> None:
        with self._changed:
            if content["type"] == "messages":
                self.batches.append(content["rows"])
            else:
                self.answers.append(content)
            self._changed.notify_all()

    def send(self, **content: Any) -> None:
        self.widget._on_msg(self.widget, content, None)

    @property
    def rows(self) -> list[list[Any]]:
        return [row for batch in self.batches for row in batch]

    def wait_rows(self, n: int) -> list[list[Any]]:
        deadline = time.monotonic() + WAIT_S
        with self._changed:
            while len(self.rows) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.rows)} rows arrived, waited for {n}: {self.rows[-3:]}")
                self._changed.wait(left)
        return self.rows


@pytest.fixture
def ada(real_hub: HubProcess) -> HubProcess:
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    return real_hub


@pytest.fixture
def feed(ada: HubProcess) -> Iterator[kc.Feed]:
    yield kc.create_feed(label="run <12>")


def append_from_another_process(hub: HubProcess, tmp_path: Path, uri: str, messages: list[dict[str, Any]]) -> None:
    """Another computer (its own key, signed in as ada) appends ``messages``."""
    code = (
        "import json, sys, kachery_core as kc\n"
        f"kc.init(hub_url={hub.url!r}, token={hub.token('ada@example.org')!r})\n"
        f"print(kc.load_feed({uri!r}).append_messages(json.loads({json.dumps(messages)!r})))\n"
    )
    run_python(code, env={"KACHERY_CLOUD_DIR": str(tmp_path / "other-computer")})


def test_messages_appended_elsewhere_reach_the_front_end(feed: kc.Feed, ada: HubProcess, tmp_path: Path) -> None:
    feed.append_messages([{"i": 0}, {"i": 1}])
    viewer = FeedViewer(feed)
    front = FrontEnd(viewer)
    assert (viewer.feed_uri, viewer.label, viewer.can_append) == (feed.uri, "run <12>", True)
    assert not viewer.following, "nothing is followed before a front end asks"
    front.send(type="ready", **{"from": 0})
    assert viewer.status == "live"
    assert [r[0] for r in front.wait_rows(2)] == [0, 1]

    append_from_another_process(ada, tmp_path, feed.uri, [{"from": "elsewhere", "html": "<img src=x>"}])
    rows = front.wait_rows(3)
    number, when, user, text = rows[2]
    assert (number, user, json.loads(text)) == (2, "ada@example.org", {"from": "elsewhere", "html": "<img src=x>"})
    assert abs(when - time.time()) < 3600, "the hub's time, in epoch seconds"
    viewer.close()
    assert viewer.wait_stopped(WAIT_S) and not viewer.following


def test_a_long_feed_goes_out_in_coalesced_batches(feed: kc.Feed) -> None:
    feed.append_messages([{"i": i, "pad": "x" * 50} for i in range(5000)])
    viewer = FeedViewer(feed)
    front = FrontEnd(viewer)
    front.send(type="ready", **{"from": 0})
    rows = front.wait_rows(5000)
    assert [r[0] for r in rows] == list(range(5000)), "consecutive, no gap, no duplicate"
    assert all(len(b) <= viewer.batch_size for b in front.batches)
    assert len(front.batches) < 100, f"{len(front.batches)} batches for 5,000 messages: not coalesced"
    viewer.close()
    assert viewer.wait_stopped(WAIT_S)


def test_a_front_end_asks_again_from_where_it_stands(feed: kc.Feed) -> None:
    """A reloaded page, or one that missed a batch, asks from a number; it gets everything from there."""
    feed.append_messages([{"i": i} for i in range(6)])
    viewer = FeedViewer(feed, start=2)
    front = FrontEnd(viewer)
    front.send(type="ready", **{"from": 0})  # before the viewer's start: from its start
    assert [r[0] for r in front.wait_rows(4)] == [2, 3, 4, 5]
    first_run = viewer._following
    front.send(type="ready", **{"from": 4})
    assert [r[0] for r in front.wait_rows(6)][4:] == [4, 5]
    assert first_run is not None and first_run.join(WAIT_S), "the previous follower ended"
    viewer.close()
    assert viewer.wait_stopped(WAIT_S)


def test_closing_stops_the_follower_while_it_waits(feed: kc.Feed) -> None:
    viewer = FeedViewer(feed)
    text = viewer._repr_mimebundle_()[0]["text/plain"]  # what VS Code or a saved notebook shows
    assert text.startswith(f"kachery feed {feed.uri}") and text.endswith("(live viewer)"), text
    front = FrontEnd(viewer)
    front.send(type="ready", **{"from": 0})
    assert viewer.following
    viewer.close()  # the reader is blocked in the hub's stream: nothing has been appended
    assert viewer.wait_stopped(WAIT_S), "the follower thread is still running"
    assert viewer.status == "closed" and viewer.comm is None
    front.send(type="ready", **{"from": 0})
    assert not viewer.following, "a closed viewer does not follow again"


def test_the_front_end_closing_the_comm_stops_the_follower(feed: kc.Feed) -> None:
    viewer = FeedViewer(feed)
    front = FrontEnd(viewer)
    front.send(type="ready", **{"from": 0})
    assert viewer.comm is not None and viewer.following
    viewer.comm.handle_close({"content": {"comm_id": viewer.comm.comm_id, "data": {}}})
    assert viewer.wait_stopped(WAIT_S) and not viewer.following


def test_the_append_box_appends_and_answers_typed_errors(feed: kc.Feed) -> None:
    viewer = FeedViewer(feed)
    front = FrontEnd(viewer)
    front.send(type="append", text='{"step": 1, "note": "ok"}')
    assert front.answers[-1] == {"type": "append_result", "ok": True, "number": 0}
    assert feed.get_messages() == [{"step": 1, "note": "ok"}]
    for text, error in [
        ("[1, 2]", "FeedMessageError: a message is a JSON object"),
        ("{oops", "JSONDecodeError: not JSON"),
        ('{"x": NaN}', "FeedMessageError: "),
        ("   ", "FeedMessageError: the message is empty"),
        (json.dumps({"big": "x" * (1024 * 1024 + 1)}), "FeedLimitError: "),
    ]:
        front.send(type="append", text=text)
        answer = front.answers[-1]
        assert answer["ok"] is False and answer["error"].startswith(error), (text[:20], answer)
        assert "\n" not in answer["error"]
    assert feed.get_num_messages() == 1, "a refused message stores nothing"
    viewer.close()


def test_no_append_box_for_a_reader(real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))["default_project_id"]
    feed = kc.create_feed()
    kc.set_project_member(project, "bob@example.org", "read")
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "bob"))
    kc.init(hub_url=real_hub.url, token=real_hub.token("bob@example.org"))
    viewer = FeedViewer(feed.uri)
    assert viewer.can_append is False
    front = FrontEnd(viewer)
    front.send(type="append", text='{"a": 1}')
    assert front.answers[-1]["ok"] is False and front.answers[-1]["error"].startswith("HubPermissionError")
    viewer.close()


def test_the_display_of_a_feed_has_text_for_where_widgets_do_not_render(feed: kc.Feed) -> None:
    feed.append_messages([{"i": 0}, {"i": 1}, {"i": 2}])
    data, metadata = feed_mimebundle(feed)
    assert data["text/plain"] == f"kachery feed {feed.uri} 'run <12>', 3 messages"
    assert "run &lt;12&gt;" in data["text/html"] and "<12>" not in data["text/html"]
    assert data[WIDGET_MIME]["model_id"]
    assert isinstance(metadata, dict)


def test_the_display_of_a_feed_without_a_hub_says_why() -> None:
    data, _ = feed_mimebundle(kc.Feed("abc123"))
    assert data["text/plain"].startswith("kachery feed kachery-feed://abc123 (HubNotConfiguredError: ")
    assert WIDGET_MIME not in data


# ---------------------------------------------------------------- %kc_feed


def test_kc_feed_shows_a_viewer(feed: kc.Feed, ip: InteractiveShell) -> None:
    viewer = ip.run_line_magic("kc_feed", feed.uri)
    assert isinstance(viewer, FeedViewer) and viewer.feed_uri == feed.uri and viewer.start == 0
    viewer.close()
    viewer = ip.run_line_magic("kc_feed", f"{feed.feed_id} --start 7")
    assert viewer.feed_uri == feed.uri and viewer.start == 7
    viewer.close()


@pytest.mark.parametrize(("line", "says"), [
    ("", "the following arguments are required: feed"),
    ("kachery-feed://abc --start -1", "--start -1: a message number is 0 or more"),
    ("kachery-feed://abc --start two", "invalid int value: 'two'"),
    ("sha1://" + "a" * 40, "sha1://"),
    ("has spaces'", "no closing quotation"),
])
def test_kc_feed_usage_errors_are_one_line(ip: InteractiveShell, line: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_feed", line)
    assert says in str(info.value) and "\n" not in str(info.value).strip()


def test_kc_feed_without_a_hub_names_the_command(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_feed", "kachery-feed://abc")
    assert "kachery-hub serve" in str(info.value) and "\n" not in str(info.value)


def test_kc_feed_of_an_unknown_feed(ada: HubProcess, ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_feed", "kachery-feed://no-such-feed")
    assert "no-such-feed" in str(info.value) or "not found" in str(info.value).lower()
    assert "\n" not in str(info.value)


def test_a_viewer_that_cannot_start_leaves_nothing_behind() -> None:
    """No hub, or a bad start: the error, and nothing raised later when the half-made widget is collected."""
    import gc

    for feed, start in [("kachery-feed://abc", 0), (kc.Feed("abc"), -1)]:
        with pytest.raises(kc.KacheryError):
            FeedViewer(feed, start=start)
        gc.collect()  # Widget.__del__ closes it: that must not fail (warnings are errors here)


def test_a_feed_as_a_cell_s_value_shows_the_viewer(feed: kc.Feed, ip: InteractiveShell) -> None:
    assert ip.display_formatter is not None
    data, _ = ip.display_formatter.format(feed)  # type: ignore[no-untyped-call]
    assert WIDGET_MIME in data
    assert data["text/plain"] == f"kachery feed {feed.uri} 'run <12>', 0 messages"
