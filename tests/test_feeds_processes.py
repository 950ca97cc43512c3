"""Feeds between processes: real ``kachery-hub serve`` processes and clients in processes of their own.

Each client (``tests/feed_worker.py``) has its own kachery directory and signs in
with a token, as another computer would. The database matters (numbering under
concurrent appends, durability across a SIGKILL, wake-ups across hub processes),
so the tests run on the embedded SQLite and on PostgreSQL.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from feed_worker import Worker  # noqa: E402
from hub_fixtures import _fresh_postgres_database, postgres_server  # noqa: E402,F401
from hub_process import HubProcess, free_port, running  # noqa: E402

pytestmark = pytest.mark.slow

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
#: get_next_messages' timeout in the wake-up tests; returning well before it means it was woken.
WAIT = 30.0


def _database_args(kind: str, request: pytest.FixtureRequest) -> list[str]:
    if kind == "postgresql":
        return ["--database", _fresh_postgres_database(request.getfixturevalue("postgres_server"))]
    return []


@pytest.fixture(params=["sqlite", "postgresql"])
def feed_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub on each database in turn."""
    with running(HubProcess(tmp_path / "hub-data", free_port(), *_database_args(request.param, request))) as hub:
        yield hub


def _args(hub: HubProcess | str, token: str | None, feed: Any, *rest: object) -> list[str]:
    url = hub if isinstance(hub, str) else hub.url
    return ["--hub", url, *(["--token", token] if token else []), "--feed", feed.feed_id, *map(str, rest)]


def _no_errors(*workers: Worker) -> None:
    for w in workers:
        errors = w.of("error")
        assert not errors, f"worker {w.name}: {errors[0]}; stderr {w.stderr()[-3000:]!r}"


def _kill_all(workers: list[Worker]) -> None:
    for w in workers:
        w.kill()


def test_get_next_messages_in_another_process_is_woken_by_an_append(feed_hub: HubProcess, tmp_path: Path) -> None:
    token = feed_hub.token(ALICE)
    kc.init(hub_url=feed_hub.url, token=token)
    feed = kc.create_feed(label="progress")
    assert feed.append_message({"step": "already there"}) == 0
    workers: list[Worker] = []
    try:
        reader = Worker(tmp_path, "reader", "next", *_args(feed_hub, token, feed, "--start", 1, "--timeout", WAIT))
        workers.append(reader)
        reader.wait_event("waiting")
        time.sleep(1.0)  # the reader is inside get_next_messages: nothing after its position yet
        assert reader.of("got") == []
        writer = Worker(tmp_path, "writer", "append", *_args(feed_hub, token, feed, "--count", 1, "--writer", 7))
        workers.append(writer)
        writer.finish()
        _no_errors(writer)
        got = reader.wait_event("got", timeout=WAIT + 30)
        _no_errors(reader)
        assert got["messages"] == [{"w": 7, "i": 0}]
        assert got["position"] == 2
        # Returned with the message, not at the end of its 30 s: it was woken by the append.
        assert got["elapsed"] < WAIT / 2, got
    finally:
        _kill_all(workers)


def test_eight_writers_concurrently_and_every_reader_sees_one_gap_free_order(
    feed_hub: HubProcess, tmp_path: Path
) -> None:
    writers_n, each = 8, 500
    total = writers_n * each
    token = feed_hub.token(ALICE)
    kc.init(hub_url=feed_hub.url, token=token)
    feed = kc.create_feed(label="concurrent")
    go = tmp_path / "go"
    workers: list[Worker] = []
    try:
        follower = Worker(tmp_path, "follower", "follow", *_args(feed_hub, token, feed, "--total", total))
        looper = Worker(tmp_path, "looper", "next-loop", *_args(feed_hub, token, feed, "--total", total))
        workers += [follower, looper]
        follower.wait_event("ready")
        looper.wait_event("ready")
        writers = [Worker(tmp_path, f"writer{w}", "append",
                          *_args(feed_hub, token, feed, "--writer", w, "--count", each, "--go", go))
                   for w in range(writers_n)]
        workers += writers
        for w in writers:
            w.wait_event("ready")
        go.touch()  # all at once
        for w in writers:
            w.finish(timeout=600)
        follower.finish(timeout=600)
        looper.finish(timeout=600)
        _no_errors(*workers)
        reader = Worker(tmp_path, "reader", "read", *_args(feed_hub, token, feed))
        workers.append(reader)
        read = reader.wait_event("read", timeout=300)
    finally:
        _kill_all(workers)

    followed = follower.of("msg")
    assert [m["n"] for m in followed] == list(range(total)), "follow(): numbers with a gap, repeated or out of order"
    order = [m["m"] for m in followed]
    assert {m["user"] for m in followed} == {ALICE}
    # The other readers saw the same messages in the same order.
    assert [m for e in looper.of("got") for m in e["messages"]] == order
    assert read["count"] == total
    assert read["get"] == order
    assert read["iter"] == [[n, m] for n, m in enumerate(order)]
    # Each writer's messages in its own order; each call's messages under consecutive numbers, as told.
    for k in range(writers_n):
        assert [m["i"] for m in order if m["w"] == k] == list(range(each)), f"writer {k}"
    told: list[int] = []
    for k, writer in enumerate(writers):
        calls = writer.of("appended")
        assert sum(len(c["items"]) for c in calls) == each
        assert any(len(c["items"]) > 1 for c in calls) and any(len(c["items"]) == 1 for c in calls)
        for c in calls:
            first = c["numbers"][0]
            assert c["numbers"] == list(range(first, first + len(c["items"]))), c
            assert order[first:first + len(c["items"])] == [{"w": k, "i": i} for i in c["items"]], c
            told += c["numbers"]
    assert sorted(told) == list(range(total))


def test_a_follow_in_progress_survives_a_sigkilled_hub_with_no_gap_and_no_duplicate(
    feed_hub: HubProcess, tmp_path: Path
) -> None:
    count = 400
    token = feed_hub.token(ALICE)
    kc.init(hub_url=feed_hub.url, token=token)
    feed = kc.create_feed(label="through a crash")
    workers: list[Worker] = []
    try:
        follower = Worker(tmp_path, "follower", "follow", *_args(feed_hub, token, feed, "--total", 10**9))
        workers.append(follower)
        follower.wait_event("ready")
        # One append at a time, retrying those the dead hub did not answer (such a retry may store
        # the message twice under two numbers: the writer cannot know; the follower must not care).
        writer = Worker(tmp_path, "writer", "append", *_args(feed_hub, token, feed, "--count", count,
                                                             "--pattern", "single", "--pause", 0.02,
                                                             "--retry-seconds", 120))
        workers.append(writer)
        follower.wait_for(lambda events: sum(e["event"] == "msg" for e in events) >= 100, what="100 messages")
        feed_hub.stop(signal.SIGKILL)
        appended_before = sum(len(e["items"]) for e in writer.of("appended"))
        followed_before = len(follower.of("msg"))
        assert appended_before < count, "the writer finished before the hub was killed"
        feed_hub.start()
        writer.finish(timeout=300)
        _no_errors(writer)
        kc.init(hub_url=feed_hub.url, token=token)
        feed = kc.load_feed(feed.uri)
        total = feed.get_num_messages()
        assert total >= count
        assert feed.append_message({"end": True}) == total
        follower.wait_for(lambda events: any(e["event"] == "msg" and e["m"] == {"end": True} for e in events),
                          what="the last message")
        follower.kill()
        _no_errors(follower)
        stored = feed.get_messages()
    finally:
        _kill_all(workers)

    followed = follower.of("msg")
    assert followed_before < total + 1, "the follow was not in progress when the hub was killed"
    assert [m["n"] for m in followed] == list(range(total + 1)), "a gap or a duplicate across the restart"
    assert [m["m"] for m in followed] == stored
    if followed[-1].get("reconnects") is not None:
        assert followed[-1]["reconnects"] >= 1, "the follower never lost its connection"
    # Every message the writer was told was stored is there, under the number it was told.
    for e in writer.of("appended"):
        assert stored[e["numbers"][0]] == {"w": 0, "i": e["items"][0]}
    assert sorted({m["i"] for m in stored if "i" in m}) == list(range(count))


def test_two_hub_processes_on_one_postgresql_deliver_each_others_appends_live(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    hub_a = HubProcess(tmp_path / "hub-a", free_port(), "--database", database)
    hub_b = HubProcess(tmp_path / "hub-b", free_port(), "--database", database)
    workers: list[Worker] = []
    with running(hub_a), running(hub_b):
        try:
            token = hub_a.token(ALICE)
            kc.init(hub_url=hub_a.url, token=token)
            feed = kc.create_feed(label="replicas")
            reader = Worker(tmp_path, "reader-b", "next", *_args(hub_b, token, feed, "--timeout", WAIT))
            workers.append(reader)
            reader.wait_event("waiting")
            time.sleep(1.0)  # waiting on hub B
            assert reader.of("got") == []
            writer = Worker(tmp_path, "writer-a", "append", *_args(hub_a, token, feed, "--count", 1))
            workers.append(writer)
            writer.finish()
            _no_errors(writer)
            got = reader.wait_event("got", timeout=WAIT + 30)
            assert got["messages"] == [{"w": 0, "i": 0}]
            assert got["elapsed"] < WAIT / 2, got  # woken through PostgreSQL, not timed out
            # A stream of appends through A, followed live through B.
            follower = Worker(tmp_path, "follower-b", "follow", *_args(hub_b, token, feed, "--start", 1,
                                                                       "--total", 300))
            workers.append(follower)
            follower.wait_event("ready")
            writer = Worker(tmp_path, "writer-a2", "append", *_args(hub_a, token, feed, "--count", 300,
                                                                    "--writer", 1))
            workers.append(writer)
            writer.finish(timeout=300)
            follower.finish(timeout=300)
            _no_errors(*workers)
        finally:
            _kill_all(workers)
    followed = follower.of("msg")
    assert [m["n"] for m in followed] == list(range(1, 301))
    assert [m["m"] for m in followed] == [{"w": 1, "i": i} for i in range(300)]


def _steps(worker: Worker) -> dict[str, dict[str, Any]]:
    worker.finish()
    _no_errors(worker)
    return {e["name"]: e for e in worker.of("step")}


def test_who_may_read_and_append_a_feed(feed_hub: HubProcess, tmp_path: Path) -> None:
    tokens = {who: feed_hub.token(who) for who in (ALICE, BOB, CAROL)}
    pa = kc.init(hub_url=feed_hub.url, token=tokens[ALICE])["default_project_id"]
    private = kc.create_feed(label="private")
    private.append_message({"secret": 1})
    open_project = kc.create_project("open data")
    kc.set_project_public(open_project, True)
    public = kc.create_feed(project_id=open_project, label="public")
    public.append_message({"hello": "world"})
    kc.set_project_member(pa, BOB, "read")
    unknown = kc.create_feed(label="to be forgotten")  # a well-formed id; its twin below does not exist
    missing_id = unknown.feed_id[:-4] + ("0000" if not unknown.feed_id.endswith("0000") else "1111")

    class _Id:
        feed_id = missing_id

    carol = Worker(tmp_path, "carol", "probe", *_args(feed_hub, tokens[CAROL], private))
    carol_missing = Worker(tmp_path, "carol-missing", "probe", *_args(feed_hub, tokens[CAROL], _Id))
    stranger = Worker(tmp_path, "stranger", "probe", *_args(feed_hub, None, public), ephemeral=True)
    stranger_private = Worker(tmp_path, "stranger-private", "probe", *_args(feed_hub, None, private), ephemeral=True)
    bob = Worker(tmp_path, "bob", "probe", *_args(feed_hub, tokens[BOB], private))
    try:
        # A non-member learns nothing: the same refusal as for a feed that does not exist.
        refused, missing = _steps(carol)["load"], _steps(carol_missing)["load"]
        assert not refused["ok"] and refused["error"]["type"] == "FeedNotFoundError", refused
        assert refused["error"]["status"] == 404 and refused["error"]["code"] == "feed_not_found"
        assert {k: refused["error"][k] for k in ("type", "status", "code")} == \
               {k: missing["error"][k] for k in ("type", "status", "code")}
        assert _steps(stranger_private)["load"]["error"]["code"] == "feed_not_found"

        # A public-read project's feed: readable without signing in, not appendable.
        s = _steps(stranger)
        assert s["load"]["ok"] and s["get"]["value"] == [{"hello": "world"}], s
        assert s["count"]["value"] == 1 and s["next"]["value"] == [{"hello": "world"}]
        assert s["follow"]["value"] == {"n": 0, "m": {"hello": "world"}, "user": None}  # no member: no email
        assert s["can_append"]["value"] is False
        assert not s["append"]["ok"] and "HubAuthError" in s["append"]["error"]["bases"], s["append"]

        # A read member reads, and is refused an append (403).
        b = _steps(bob)
        assert b["get"]["value"] == [{"secret": 1}] and b["can_append"]["value"] is False
        assert b["follow"]["value"] == {"n": 0, "m": {"secret": 1}, "user": ALICE}
        assert not b["append"]["ok"] and b["append"]["error"]["status"] == 403, b["append"]
        assert "HubPermissionError" in b["append"]["error"]["bases"]
    finally:
        _kill_all([carol, carol_missing, stranger, stranger_private, bob])
    # Nothing any refused append sent was stored.
    assert private.get_messages() == [{"secret": 1}]
    assert public.get_messages() == [{"hello": "world"}]
    assert private.can_append() is True


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_member_removed_while_following_stops_receiving(kind: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    keepalive = 1.0
    hub = HubProcess(tmp_path / "hub-data", free_port(), *_database_args(kind, request))
    workers: list[Worker] = []
    with running(hub, env={"KACHERY_HUB_FEED_KEEPALIVE": str(keepalive)}):
        try:
            pa = kc.init(hub_url=hub.url, token=hub.token(ALICE))["default_project_id"]
            feed = kc.create_feed(label="until removed")
            kc.set_project_member(pa, BOB, "read")
            bob = Worker(tmp_path, "bob", "follow", *_args(hub, hub.token(BOB), feed, "--total", 10**9))
            workers.append(bob)
            bob.wait_event("ready")
            feed.append_message({"before": True})
            bob.wait_for(lambda events: any(e["event"] == "msg" for e in events), what="the first message")
            kc.remove_project_member(pa, BOB)
            # Appends go on after the removal, more often than the keep-alive period, for several periods.
            appended = int(5 * keepalive / 0.2)
            for i in range(appended):
                feed.append_message({"after": i})
                time.sleep(0.2)
            bob.wait_for(lambda events: any(e["event"] in ("error", "exit") for e in events),
                         timeout=3 * keepalive + 15, what="the end of the follow")
        finally:
            _kill_all(workers)
    errors = bob.of("error")
    assert errors and errors[0]["error"]["type"] in ("FeedNotFoundError", "HubPermissionError"), bob.events[-3:]
    received = [m["m"] for m in bob.of("msg")]
    assert received[0] == {"before": True}
    # Cut off while the appends went on (within a keep-alive period or so), not once they stopped.
    after = [m["after"] for m in received if "after" in m]
    assert after == list(range(len(after))) and len(after) < appended - 2, \
        f"a removed member was sent the messages appended after the removal: {after}"
