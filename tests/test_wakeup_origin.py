"""Wake-ups on PostgreSQL: a hub ignores the NOTIFYs it sent itself, other hubs still get them.

A hub wakes its own followers right after its commit (a feed's with the page
itself); the NOTIFY it sent in that transaction comes back to its own listener
too, and must not wake them a second time (bare, which makes them read the page
from the database). Another hub on the same database, and a note from an older
hub that names no origin, still wake followers.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from sqlalchemy import text  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import kachery_core as kc  # noqa: E402
import kachery_hub._feeds as feeds  # noqa: E402
from hub_fixtures import HUB_URL, Hub, _fresh_postgres_database, make_hub, postgres_server  # noqa: E402,F401
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub._auth import ANONYMOUS  # noqa: E402
from kachery_hub._state import HubState  # noqa: E402
from kachery_hub._wakeup import PG_CHANNEL, Subscription, WakeUps  # noqa: E402

FOLLOWERS = 20
APPENDS = 10
TIMEOUT = 30.0


class Loop:
    """An event loop in a thread of its own, where followers wait (as a hub's streams do)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


def _record(sub: Subscription, wakes: list[tuple[int, bool]], seen: threading.Event | None = None) -> None:
    """Keep each wake-up ``sub`` gets: its number and whether it came with its page."""
    wake = sub._wake

    def recording(number: int, page: Any = None) -> None:
        if number >= 0:  # (-1: the listener started, and everyone re-reads)
            wakes.append((number, page is not None))
        wake(number, page)
        if seen is not None:
            seen.set()

    sub._wake = recording  # type: ignore[method-assign]


def _notify(state: HubState, payload: str) -> None:
    with state.db.engine.begin() as conn:
        conn.execute(text(f"SELECT pg_notify('{PG_CHANNEL}', :p)"), {"p": payload})


async def _until_listening(*wakeups: WakeUps) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if all(w._listening for w in wakeups):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the wake-up listeners did not start")


@pytest.fixture
def two_hubs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Hub, HubState]]:
    """Hub A (in-process, with a client signed in) and hub B, another app on A's PostgreSQL database."""
    for a in make_hub("postgresql", request, tmp_path, monkeypatch):
        app = create_app(Settings(data_dir=tmp_path / "hub-b", database_url=a.state.db.url, public_urls=(HUB_URL,)))
        with TestClient(app, raise_server_exceptions=False):
            yield a, app.state.hub


def test_an_append_wakes_its_own_followers_once_with_the_page_and_the_other_hubs_through_notify(
        two_hubs: tuple[Hub, HubState], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_hubs
    project = a.sign_in("alice", "alice@example.org")
    kc.set_project_public(project, True)
    feed = kc.create_feed()
    feed.append_messages([{"i": -1}])  # message 0: followers start after it
    feed_id = feed.feed_id
    with a.state.db.read() as conn:
        access = feeds.require_feed(conn, ANONYMOUS, feed_id)

    reads = {"a": 0, "b": 0}
    read_page = feeds.read_page

    def counting(conn: Any, *args: Any) -> Any:
        reads["a" if conn.engine is a.state.db.engine else "b"] += 1
        return read_page(conn, *args)

    monkeypatch.setattr(feeds, "read_page", counting)
    last = APPENDS  # the number of the last message once all are in
    got: dict[str, list[int]] = {}
    done = threading.Event()
    tasks: list[asyncio.Task[None]] = []
    plain: list[tuple[int, bool]] = []  # what a plain subscription on A's feed channel is woken with
    barrier = threading.Event()
    loop = Loop()

    async def follow(name: str, state: HubState) -> None:
        ids = got.setdefault(name, [])
        async for chunk in feeds._stream(state, ANONYMOUS, access, 1, None, 60):
            for line in chunk.decode().splitlines():
                if line.startswith("data: {"):
                    page = json.loads(line[6:])
                    ids.extend(range(page["first"], page["first"] + len(page["messages"])))
            if all(got.get(n, [-1])[-1:] == [last] for n in names):
                done.set()

    names = [f"a{i}" for i in range(FOLLOWERS)] + ["b"]

    async def start() -> tuple[Any, Any]:
        own = a.state.wakeups.subscribe(feeds.channel(feed_id))
        mark = a.state.wakeups.subscribe("barrier:1")
        _record(own.__enter__(), plain)
        _record(mark.__enter__(), [], barrier)
        for name in names:
            tasks.append(asyncio.get_running_loop().create_task(follow(name, b if name == "b" else a.state)))
        await _until_listening(a.state.wakeups, b.wakeups)
        return own, mark

    held: tuple[Any, Any] | None = None
    try:
        held = loop.run(start)
        for _ in range(int(TIMEOUT / 0.01)):  # every follower has read the feed as it was (nothing yet)
            if reads["a"] >= FOLLOWERS and reads["b"] >= 1:
                break
            threading.Event().wait(0.01)
        before = dict(reads)
        for i in range(APPENDS):
            feed.append_messages([{"i": i}])
        assert done.wait(TIMEOUT), {n: ids[-3:] for n, ids in got.items()}
        # A note sent after the appends reaches A's listener after their NOTIFYs: once A's
        # subscription to it wakes, whatever A's listener made of them has been done.
        _notify(a.state, "barrier:1 1")
        assert barrier.wait(TIMEOUT)
        loop.run(lambda: asyncio.sleep(0.05))  # (a stream woken bare would be reading now)
        for name in names:
            assert got[name] == list(range(1, last + 1)), name  # every message once, in order, live
        # A's subscribers: one wake-up per append, each with its page; none bare from A's own NOTIFY.
        assert plain == [(n, True) for n in range(1, last + 1)]
        assert reads["a"] - before["a"] == 0
        assert reads["b"] - before["b"] >= 1  # B heard of them by NOTIFY alone, and read them
    finally:
        async def stop() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in held or ():
                sub.__exit__(None, None, None)
            await a.state.wakeups.aclose()
            await b.wakeups.aclose()

        loop.run(stop)
        loop.close()


def test_a_note_without_an_origin_or_from_another_process_wakes_and_ones_own_does_not(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    state = WakeUps(url)
    from kachery_hub._database import Database

    db = Database(url)
    wakes: list[tuple[int, bool]] = []
    loop = Loop()

    def send(payload: str) -> None:
        with db.engine.begin() as conn:
            conn.execute(text(f"SELECT pg_notify('{PG_CHANNEL}', :p)"), {"p": payload})

    async def start() -> Any:
        sub = state.subscribe("feed:x")
        _record(sub.__enter__(), wakes)
        await _until_listening(state)
        return sub

    def until(n: int) -> None:
        for _ in range(int(TIMEOUT / 0.01)):
            if len(wakes) >= n:
                return
            threading.Event().wait(0.01)
        raise AssertionError(wakes)

    held: Any = None
    try:
        held = loop.run(start)  # (kept: a subscription ends when its context manager goes)
        send("feed:x 5")  # an older hub's note: no origin
        until(1)
        with db.engine.begin() as conn:  # this process's own: ignored
            state.publish(conn, "feed:x", 6)
        send(f"@{'0' * 16} feed:x 7")  # another process's
        until(2)
        send("feed:x 8")  # after both: the own one was heard and dropped by now
        until(3)
        assert wakes == [(5, False), (7, False), (8, False)]
        own = state.origin
        assert len(own) == 16 and state.origin == own  # one per process
        monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a child forked from it: its own
        assert state.origin != own
    finally:
        async def stop() -> None:
            if held is not None:
                held.__exit__(None, None, None)
            await state.aclose()

        loop.run(stop)
        loop.close()
        db.engine.dispose()
