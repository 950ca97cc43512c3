"""Feeds through an in-process hub on SQLite and PostgreSQL: the API, numbering, paging, limits, who may.

Waiting and following live need a real server (streams): see test_feeds_processes.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub, signed_headers

import kachery_core as kc
from kachery_core import _constants, _hub
from kachery_core._feeds import _messages


@pytest.fixture(params=["sqlite", "postgresql"])
def fhub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _stored(hub: Hub, feed_id: str) -> int:
    from sqlalchemy import text

    with hub.state.db.begin() as conn:
        count = conn.execute(text("SELECT message_count FROM feeds WHERE feed_id = :f"), {"f": feed_id}).scalar_one()
        rows = conn.execute(text("SELECT COALESCE(SUM(count), 0) FROM feed_batches WHERE feed_id = :f"),
                            {"f": feed_id}).scalar_one()
    assert int(count) == int(rows)
    return int(count)


def test_create_append_and_read_back_with_numbers_time_and_author(fhub: Hub) -> None:
    project = fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed(label="acquisition")
    assert feed.uri == f"kachery-feed://{feed.feed_id}" and feed.project_id == project and feed.label == "acquisition"
    assert feed.get_num_messages() == 0 and feed.can_append()
    assert feed.append_message({"step": 0, "loss": 1.5}) == 0
    assert feed.append_messages([{"step": i} for i in (1, 2, 3)]) == [1, 2, 3]
    assert feed.append_messages([]) == []
    assert feed.get_num_messages() == 4

    again = kc.load_feed(feed.uri)
    assert kc.load_feed(feed.feed_id).feed_id == again.feed_id == feed.feed_id
    assert again.get_messages() == [{"loss": 1.5, "step": 0}, {"step": 1}, {"step": 2}, {"step": 3}]
    assert again.get_messages(1, 3) == [{"step": 1}, {"step": 2}]
    full = list(again.iter_messages())
    assert [m.number for m in full] == [0, 1, 2, 3]
    assert {m.user for m in full} == {"a@example.org"}
    assert full[1].time == full[3].time >= full[0].time  # one append, one time
    assert _stored(fhub, feed.feed_id) == 4

    listed = kc.list_feeds()
    assert [(f["feed_id"], f["label"], f["message_count"]) for f in listed] == [(feed.feed_id, "acquisition", 4)]
    assert listed[0]["last_append_at"] == full[3].time


def test_get_next_messages_follows_the_position_as_kachery_cloud_does(fhub: Hub) -> None:
    fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed()
    assert feed.current_message_number == 0 and feed.get_next_messages() == []
    feed.append_messages([{"i": i} for i in range(5)])
    assert feed.get_next_messages(max_num_messages=2) == [{"i": 0}, {"i": 1}]
    assert feed.current_message_number == 2
    assert feed.get_next_messages() == [{"i": 2}, {"i": 3}, {"i": 4}]
    assert feed.get_next_messages() == [] and feed.current_message_number == 5
    feed.set_position(1)
    assert feed.get_next_messages(max_num_messages=1) == [{"i": 1}]
    with pytest.raises(kc.InvalidArgumentError, match="position"):
        feed.set_position(-1)
    with pytest.raises(kc.InvalidArgumentError, match="timeout_sec"):
        feed.get_next_messages(timeout_sec=-1)


def test_pages_start_inside_a_batch_and_span_many_batches(fhub: Hub) -> None:
    fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed()
    sizes = [1, 7, 2500, 3, 10_000, 1, 40]
    expected: list[dict[str, object]] = []
    for size in sizes:
        batch = [{"n": len(expected) + i, "s": "é" * (i % 5)} for i in range(size)]
        feed.append_messages(batch)
        expected += batch
    total = len(expected)
    for start, end in [(0, None), (5, 9), (8, 2600), (2507, 2512), (2511, 12_600), (12_510, 12_552), (total - 1, total)]:
        got = list(feed.iter_messages(start, end))
        assert [m.number for m in got] == list(range(start, min(end, total) if end is not None else total))
        assert [m.message for m in got] == expected[start:end]
    # The hub's pages are columnar: one run per append, cut at the page's ends.
    page = _hub.connect().json("GET", f"/api/feeds/{feed.feed_id}/messages", params={"start": 5, "limit": 4})
    assert page["first"] == 5 and page["message_count"] == total
    assert [r[0] for r in page["runs"]] == [3, 1] and len(page["messages"]) == 4
    assert [m.number for m in _messages(page)] == [5, 6, 7, 8]


def test_bad_messages_are_refused_by_name_and_store_nothing(fhub: Hub) -> None:
    fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed()
    feed.append_message({"ok": True})
    cases: list[tuple[object, str]] = [
        ([{"a": 1}, [1, 2]], r"messages\[1\]: a feed message must be a dict"),
        ([{"a": {"b": [1, float("nan")]}}], r"messages\[0\]\['a'\]\['b'\]\[1\]: nan is not a JSON number"),
        ([{"a": float("inf")}], r"messages\[0\]\['a'\]: inf"),
        ([{"when": object()}], r"messages\[0\]\['when'\]: a builtins.object is not a JSON value"),
        ([{"x": {1, 2}}], r"messages\[0\]\['x'\]: a builtins.set"),
        ([{(1, 2): "tuple key"}], r"messages\[0\]\[\(1, 2\)\]: a key of type tuple"),
    ]
    for messages, pattern in cases:
        with pytest.raises(kc.FeedMessageError, match=pattern):
            feed.append_messages(messages)  # type: ignore[arg-type]
    with pytest.raises(kc.FeedMessageError, match=r"^Invalid feed message at message: a feed message must be a dict"):
        feed.append_message("text")  # type: ignore[arg-type]
    with pytest.raises(kc.InvalidArgumentError, match="messages"):
        feed.append_messages({"a": 1})  # type: ignore[arg-type]
    big = "x" * _constants.MAX_FEED_MESSAGE_BYTES
    with pytest.raises(kc.FeedLimitError, match=r"messages\[0\] is \d+ bytes of JSON, over the limit of 1048576"):
        feed.append_messages([{"big": big}])
    with pytest.raises(kc.FeedLimitError, match="10001 messages is over the limit of 10000"):
        feed.append_messages([{}] * 10_001)
    with pytest.raises(kc.FeedLimitError, match="bytes per append"):
        feed.append_messages([{"x": "y" * 600_000}] * 8)
    assert feed.get_num_messages() == 1 and _stored(fhub, feed.feed_id) == 1
    # The largest message and the largest batch the limits allow go through.
    just = {"b": "x" * (_constants.MAX_FEED_MESSAGE_BYTES - len('{"b":""}'))}
    assert feed.append_message(just) == 1
    assert feed.append_messages([{"i": i} for i in range(10_000)]) == list(range(2, 10_002))
    assert feed.get_messages(1, 2) == [just]


def _raw_append(hub: Hub, feed_id: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, object]]:
    client = _hub.connect()
    assert client.keys is not None
    path = f"/api/feeds/{feed_id}/messages"
    headers = signed_headers(client.keys, "POST", path, body)
    r = hub.http.post(path, content=body, headers={**headers, "content-type": content_type})
    return r.status_code, r.json()


def test_the_hub_checks_what_a_client_library_would_have(fhub: Hub) -> None:
    fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed()
    feed.append_message({"kept": 1})
    cases = [
        (b'{"messages": [{"a": NaN}]}', 400, "invalid_input", "NaN"),
        (b'{"messages": [{"a": Infinity}]}', 400, "invalid_input", "Infinity"),
        (b'{"messages": [{"a": 1e999}]}', 400, "invalid_input", "number JSON cannot represent"),
        (b'{"messages": [{"a": 1}, 3]}', 400, "invalid_input", "messages[1] is a JSON number"),
        (b'{"messages": [{"a": 1}, "s"]}', 400, "invalid_input", "messages[1] is a JSON string"),
        (b'{"messages": {"a": 1}}', 400, "invalid_input", "holding a list"),
        (b'[{"a": 1}]', 400, "invalid_input", "holding a list"),
        (b'{"messages": []}', 400, "invalid_input", "at least one message"),
        (b'{"messages": [{"a": 1}', 400, "invalid_input", "not valid JSON"),
        (b'{"messages": [{"a": "\xff"}]}', 400, "invalid_input", "not valid JSON"),
        (b'{"messages": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", 400, "invalid_input", "not valid JSON"),
        (json.dumps({"messages": [{}] * 10_001}).encode(), 413, "payload_too_large", "10001 messages"),
        (json.dumps({"messages": [{"s": "x" * 1_048_577}]}).encode(), 413, "payload_too_large", "messages[0] is"),
    ]
    for body, status, code, words in cases:
        got_status, got = _raw_append(fhub, feed.feed_id, body)
        assert (got_status, got["error"]["code"]) == (status, code), (body[:60], got)  # type: ignore[index]
        assert words in got["error"]["message"], got  # type: ignore[index]
    # NUL and lone surrogates are escaped in the stored text (PostgreSQL stores no NUL).
    status, got = _raw_append(fhub, feed.feed_id, b'{"messages": [{"nul": "a\\u0000b", "s": "\\ud800"}]}')
    assert status == 200, got
    assert feed.get_messages(1) == [{"nul": "a\x00b", "s": "\ud800"}]
    assert _stored(fhub, feed.feed_id) == 2


def test_who_may_read_append_and_list(fhub: Hub) -> None:
    pa = fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed(label="private")
    feed.append_message({"secret": 1})

    fhub.sign_in("B", "b@example.org")
    with pytest.raises(kc.FeedNotFoundError) as outsider:
        kc.load_feed(feed.uri)
    with pytest.raises(kc.FeedNotFoundError) as absent:
        kc.load_feed("f" + "0" * 32)
    # Same status, code and message, but for the id: an outsider cannot tell a private feed from none.
    assert (outsider.value.status, outsider.value.code) == (absent.value.status, absent.value.code) == (404, "feed_not_found")
    assert outsider.value.message.replace(feed.feed_id, "X") == absent.value.message.replace("f" + "0" * 32, "X")
    for call in (lambda: kc.Feed(feed.feed_id).get_messages(), lambda: kc.Feed(feed.feed_id).append_message({"x": 1}),
                 lambda: kc.Feed(feed.feed_id).get_next_messages()):
        with pytest.raises(kc.FeedNotFoundError):
            call()
    with pytest.raises(kc.HubPermissionError):
        kc.list_feeds(project_id=pa)
    with pytest.raises(kc.HubPermissionError):
        kc.create_feed(project_id=pa)

    fhub.use("A")
    kc.set_project_member(pa, "b@example.org", "read")
    fhub.use("B")
    reader = kc.load_feed(feed.uri)
    assert reader.get_messages() == [{"secret": 1}] and not reader.can_append()
    assert [m.user for m in reader.iter_messages()] == ["a@example.org"]  # members see authors
    with pytest.raises(kc.HubPermissionError, match="read access .*appending needs write"):
        reader.append_message({"x": 1})
    assert [f["feed_id"] for f in kc.list_feeds(project_id=pa)] == [feed.feed_id]

    fhub.use("A")
    kc.set_project_member(pa, "b@example.org", "write")
    fhub.use("B")
    assert kc.load_feed(feed.uri).can_append()
    assert kc.Feed(feed.feed_id).append_message({"from": "b"}) == 1
    assert [m.user for m in kc.load_feed(feed.uri).iter_messages()] == ["a@example.org", "b@example.org"]
    assert _stored(fhub, feed.feed_id) == 2


def test_a_public_feed_is_readable_anonymously_but_says_nothing_of_its_authors(fhub: Hub) -> None:
    pa = fhub.sign_in("A", "a@example.org")
    feed = kc.create_feed()
    feed.append_message({"public": True})
    kc.set_project_public(pa, True)

    fhub.ephemeral("anon")
    public = kc.load_feed(feed.uri)
    assert public.get_messages() == [{"public": True}] and not public.can_append()
    assert [m.user for m in public.iter_messages()] == [None]
    assert [f["feed_id"] for f in kc.list_feeds(project_id=pa)] == [feed.feed_id]
    with pytest.raises(kc.HubAuthError):
        public.append_message({"x": 1})
    with pytest.raises(kc.HubAuthError):
        kc.create_feed(project_id=pa)
    assert _stored(fhub, feed.feed_id) == 1


def test_feed_ids_and_uris_are_checked_before_any_request(fhub: Hub) -> None:
    fhub.sign_in("A", "a@example.org")
    for bad in ["", "a/b", "../x", "x" * 129, "kachery-feed://", "kachery-feed://a b", "sha1://" + "0" * 40, "f%00"]:
        with pytest.raises(kc.InvalidURIError):
            kc.load_feed(bad)
    with pytest.raises(kc.InvalidArgumentError):
        kc.load_feed(42)  # type: ignore[arg-type]
    client = _hub.connect()
    for path in ["/api/feeds/a%20b", "/api/feeds/" + "x" * 129, "/api/feeds/a%2Fb/messages"]:
        with pytest.raises((kc.HubRequestError, kc.HubNotFoundError)) as e:
            client.json("GET", path)
        assert e.value.status in (400, 404)
    for params in [{"start": -1}, {"start": "x"}, {"limit": 0}, {"limit": 10_001}, {"start": 2**63}]:
        with pytest.raises(kc.HubRequestError) as e2:
            client.json("GET", "/api/feeds/fabc/messages", params=params)
        assert e2.value.status in (400, 422)


def test_without_a_hub_create_feed_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kc"))
    monkeypatch.delenv("KACHERY_HUB_URL", raising=False)
    _hub._chosen_url.clear()
    with pytest.raises(kc.HubNotConfiguredError) as e:
        kc.create_feed()
    assert "kachery-hub serve" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(kc.HubNotConfiguredError, match="kachery-hub serve"):
        kc.load_feed("fabc")
