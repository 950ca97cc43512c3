"""Feed appends carrying an append ID are stored once however often they are sent, on SQLite and PostgreSQL.

A client that lost an append's answer (a replica died under it) sends it again with the same ID;
the hub answers what the first one got and stores nothing more. The ID is keyed by feed and by
the client that signed it: another client's ID is another append, and tells nothing of this one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import Hub, make_hub, postgres_server  # noqa: F401
from sqlalchemy import text

import kachery_core as kc
from kachery_core import _hub
from kachery_hub import _feeds
from kachery_hub._gc import collect_garbage

ALICE, BOB = "alice@example.org", "bob@example.org"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _post(messages: list[dict[str, Any]], feed_id: str, append_id: Any = None, *, raw: bool = False) -> Any:
    """An append as the signed-in client sends it (``raw``: the HTTP answer, errors included)."""
    body: dict[str, Any] = {"messages": messages}
    if append_id is not None:
        body["append_id"] = append_id
    client = _hub.connect()
    if raw:
        return client.send("POST", f"/api/feeds/{feed_id}/messages", json=body, ok_statuses=(400, 409, 422))
    return client.json("POST", f"/api/feeds/{feed_id}/messages", json=body)


def _stored(feed_id: str) -> list[dict[str, Any]]:
    return kc.load_feed(feed_id).get_messages()


def _recorded(hub: Hub) -> int:
    with hub.state.db.begin() as conn:
        return int(conn.execute(text("SELECT count(*) FROM feed_appends")).scalar_one())


def test_an_append_sent_twice_with_one_id_is_stored_once_and_answered_alike(hub: Hub) -> None:
    hub.sign_in("alice", ALICE)
    feed = kc.create_feed(label="once")
    feed.append_message({"before": True})
    aid = secrets.token_hex(16)
    first = _post([{"i": 1}, {"i": 2}], feed.feed_id, aid)
    assert (first["first_number"], first["count"], first["message_count"]) == (1, 2, 3)
    again = _post([{"i": 1}, {"i": 2}], feed.feed_id, aid)
    assert again == first  # the same numbers, count and time
    assert _stored(feed.feed_id) == [{"before": True}, {"i": 1}, {"i": 2}]
    assert feed.get_num_messages() == 3
    # Later appends go on after it; and the same ID sent once more still answers the first result.
    assert feed.append_message({"after": True}) == 3
    assert _post([{"i": 1}, {"i": 2}], feed.feed_id, aid) == first
    assert feed.get_num_messages() == 4
    # Without an ID (an older client) an append is stored each time it is sent.
    _post([{"plain": 1}], feed.feed_id)
    _post([{"plain": 1}], feed.feed_id)
    assert _stored(feed.feed_id)[4:] == [{"plain": 1}, {"plain": 1}]
    assert _recorded(hub) == 3  # this ID, and the one of each append_message


def test_an_id_sent_again_with_other_messages_is_refused_and_stores_nothing(hub: Hub) -> None:
    hub.sign_in("alice", ALICE)
    feed = kc.create_feed()
    aid = secrets.token_hex(16)
    _post([{"i": 1}], feed.feed_id, aid)
    r = _post([{"i": 2}], feed.feed_id, aid, raw=True)
    assert r.status_code == 409 and r.json()["error"]["code"] == "append_id_reused", r.text
    assert "append_id" in r.json()["error"]["message"]
    assert _stored(feed.feed_id) == [{"i": 1}]


def test_concurrent_sends_of_one_id_store_one_batch_and_all_get_its_answer(hub: Hub) -> None:
    hub.sign_in("alice", ALICE)
    feed = kc.create_feed()
    client = _hub.connect()
    for attempt in range(3):
        aid = secrets.token_hex(16)
        messages = [{"attempt": attempt, "k": k} for k in range(5)]
        start = threading.Barrier(6)
        answers: list[Any] = []

        def send() -> None:
            start.wait()
            try:
                answers.append(client.json("POST", f"/api/feeds/{feed.feed_id}/messages",
                                           json={"messages": messages, "append_id": aid}))
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                answers.append(e)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 6 and all(a == answers[0] for a in answers), answers
        assert answers[0]["first_number"] == 5 * attempt and answers[0]["count"] == 5
    assert _stored(feed.feed_id) == [{"attempt": a, "k": k} for a in range(3) for k in range(5)]
    assert _recorded(hub) == 3


def test_the_same_id_from_another_client_or_on_another_feed_is_another_append(hub: Hub) -> None:
    project = hub.sign_in("alice", ALICE)
    feed, other = kc.create_feed(), kc.create_feed()
    kc.set_project_member(project, BOB, "write")
    aid = secrets.token_hex(16)
    mine = _post([{"secret": "alice's"}], feed.feed_id, aid)
    assert mine["first_number"] == 0
    assert _post([{"on": "other"}], other.feed_id, aid)["first_number"] == 0
    hub.sign_in("bob", BOB)
    # bob probes with alice's ID, with other messages and with the same ones: each is his own new append,
    # answered like any new append (no conflict, no number or time of alice's).
    theirs = _post([{"from": "bob"}], feed.feed_id, aid)
    assert (theirs["first_number"], theirs["count"]) == (1, 1) and theirs["time"] != mine["time"]
    same = _post([{"secret": "alice's"}], feed.feed_id, secrets.token_hex(16))
    assert same["first_number"] == 2
    assert _post([{"from": "bob"}], feed.feed_id, aid) == theirs  # his own retry answers his own append
    assert _stored(feed.feed_id)[:3] == [{"secret": "alice's"}, {"from": "bob"}, {"secret": "alice's"}]
    # alice's ID still answers alice's append
    hub.use("alice")
    assert _post([{"secret": "alice's"}], feed.feed_id, aid) == mine
    assert _stored(other.feed_id) == [{"on": "other"}]


@pytest.mark.parametrize("bad", ["", "abc", "0" * 15, "x" * 65, "not hex!" * 4, "é" * 20, 12345, ["a" * 32],
                                 {"id": "a" * 32}, True])
def test_a_malformed_append_id_is_refused_and_stores_nothing(hub: Hub, bad: Any) -> None:
    hub.sign_in("alice", ALICE)
    feed = kc.create_feed()
    r = _post([{"i": 1}], feed.feed_id, bad, raw=True)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and "append_id" in error["message"], error
    assert feed.get_num_messages() == 0 and _recorded(hub) == 0


def test_gc_removes_append_ids_older_than_their_retention_and_keeps_recent_ones(hub: Hub) -> None:
    hub.sign_in("alice", ALICE)
    feed = kc.create_feed()
    old, recent = secrets.token_hex(16), secrets.token_hex(16)
    _post([{"i": "old"}], feed.feed_id, old)
    _post([{"i": "recent"}], feed.feed_id, recent)
    with hub.state.db.begin() as conn:
        conn.execute(text("UPDATE feed_appends SET appended_at = :t WHERE append_id = :a"),
                     {"t": time.time() - _feeds.APPEND_ID_SECONDS - 60, "a": old})
    report = collect_garbage(hub.state, grace_seconds=3600)
    assert report.append_ids == 1
    with hub.state.db.begin() as conn:
        assert conn.execute(text("SELECT append_id FROM feed_appends")).scalars().all() == [recent]
    assert _post([{"i": "recent"}], feed.feed_id, recent)["first_number"] == 1  # still answered
    assert _stored(feed.feed_id) == [{"i": "old"}, {"i": "recent"}]


def test_the_client_sends_an_append_again_after_its_answer_was_lost_and_it_is_stored_once(hub: Hub) -> None:
    import httpx2

    hub.sign_in("alice", ALICE)
    feed = kc.create_feed()
    real_send = hub.http.send
    sent: list[bytes] = []

    def lose_first_answer(request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        response = real_send(request, **kwargs)
        if request.url.path.endswith("/messages") and request.method == "POST":
            sent.append(request.content)
            if len(sent) in (1, 3):  # the hub stored it; the answer never came back (a replica died)
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
        return response

    hub.monkeypatch.setattr(hub.http, "send", lose_first_answer)
    assert feed.append_message({"i": 0}) == 0
    assert feed.append_messages([{"i": 1}, {"i": 2}]) == [1, 2]
    assert len(sent) == 4 and sent[0] == sent[1] and sent[2] == sent[3] and sent[0] != sent[2]
    assert _stored(feed.feed_id) == [{"i": 0}, {"i": 1}, {"i": 2}]
