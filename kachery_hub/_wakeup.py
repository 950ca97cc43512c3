"""Wake-ups: "channel X moved on to number N", to waiters in this process and in other hub processes.

A channel is a short name (``feed:<id>``; tasks use ``job:<id>`` and
``queue:<project>``). A wake-up never carries data: the waiter then reads the
database by number, so a lost wake-up costs latency and never a message.
Waiters therefore subscribe *before* they read, and re-read whenever a wait
ends, woken or not.

- In this process: :meth:`WakeUps.notify` (from any thread, after the
  transaction that wrote has committed) wakes the subscribers here.
- Across processes on one PostgreSQL: :meth:`WakeUps.publish` in the writing
  transaction sends ``NOTIFY kachery_hub, '@<origin> <channel> <number>'``, delivered at
  commit to every hub listening; each hub keeps one listening connection
  (started with the first subscription) and wakes its own subscribers. When
  that connection drops it reconnects and wakes everyone, who then re-read.
  On SQLite (one hub process) there is nothing to send.

A hub hears its own NOTIFYs too; it has woken its subscribers already (with
the page, for feeds), and a second, bare wake-up would make the ones not yet
served read the page from the database. So each process sends its origin, a
random token of its own (made again in a forked child), and ignores the
notes that carry it. A note without one (``<channel> <number>``, from an
older hub) wakes as before; an older hub hears the new form as a channel no
one follows, so during a rolling upgrade its followers see the newer hubs'
writes at their keep-alive re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

log = logging.getLogger("kachery_hub.wakeup")

PG_CHANNEL = "kachery_hub"
_NOTIFY = f"SELECT pg_notify('{PG_CHANNEL}', :payload)"
_ORIGIN = re.compile(r"@([0-9a-f]{16}) ")  # a payload's origin prefix


class Subscription:
    """Wakes when its channel is notified; made by :meth:`WakeUps.subscribe` on an event loop."""

    #: Pages kept between two takes; past this the subscriber reads the database instead.
    MAX_PAGES = 64

    def __init__(self, channel: str, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self.latest = -1  # the highest number a wake-up named (-1: none yet)
        self._event = asyncio.Event()
        self._pages: list[Any] = []
        self._bare = -1  # the highest number named by a wake-up without a page (or past MAX_PAGES)

    def _wake(self, number: int, page: Any = None) -> None:  # on the subscription's loop
        self.latest = max(self.latest, number)
        if page is not None and len(self._pages) < self.MAX_PAGES:
            self._pages.append(page)
        else:
            self._bare = max(self._bare, number)
        self._event.set()

    def poke(self) -> None:
        """Wake its waiter now, without a number (on the subscription's loop)."""
        self._event.set()

    def take(self) -> tuple[list[Any], int]:
        """The pages delivered with wake-ups since the last take, and the highest number a wake-up
        named without its page (-1: none): what the subscriber must read from the database."""
        pages, bare = self._pages, self._bare
        self._pages, self._bare = [], -1
        return pages, bare

    async def wait(self, timeout: float) -> bool:
        """Until a wake-up since the last wait (True) or ``timeout`` seconds (False)."""
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return False
        self._event.clear()
        return True


class WakeUps:
    """The subscriptions of one hub process, and its PostgreSQL listener."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self._conninfo: str | None = None
        if url.get_backend_name() == "postgresql":
            self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._origin, self._origin_pid = secrets.token_hex(8), os.getpid()

    @property
    def origin(self) -> str:
        """This process's token in the wake-ups it sends (a forked child makes its own)."""
        if self._origin_pid != os.getpid():
            self._origin, self._origin_pid = secrets.token_hex(8), os.getpid()
        return self._origin

    def prefix(self, channel: str) -> str:
        """What a wake-up of ``channel`` from this process says before its number."""
        return f"@{self.origin} {channel} "

    @property
    def crosses_processes(self) -> bool:
        return self._conninfo is not None

    @contextmanager
    def subscribe(self, *channels: str) -> Iterator[Subscription]:
        """A subscription to ``channels`` (woken by any) for the block; call it on the event loop that will wait."""
        loop = asyncio.get_running_loop()
        sub = Subscription(channels[0] if channels else "", loop)
        with self._lock:
            for channel in channels:
                self._subs.setdefault(channel, set()).add(sub)
        self._ensure_listener(loop)
        try:
            yield sub
        finally:
            with self._lock:
                for channel in channels:
                    subs = self._subs.get(channel)
                    if subs is not None:
                        subs.discard(sub)
                        if not subs:
                            del self._subs[channel]

    def followers(self, prefix: str = "") -> int:
        """How many subscriptions this process holds on channels starting with ``prefix``."""
        with self._lock:
            return sum(len(s) for c, s in self._subs.items() if c.startswith(prefix))

    def notify(self, channel: str, number: int, page: Any = None) -> None:
        """Wake this process's subscribers of ``channel``; safe from any thread.

        ``page``: what was written (a committed page up to ``number``), so subscribers here
        need not read it back; other processes get the number alone.
        """
        with self._lock:
            subs = list(self._subs.get(channel, ()))
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._wake, number, page)
            except RuntimeError:  # its loop is closed: the subscriber is gone
                continue

    def _wake_all(self) -> None:
        with self._lock:
            subs = [sub for group in self._subs.values() for sub in group]
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._wake, sub.latest)
            except RuntimeError:
                continue

    def publish(self, conn: Connection, channel: str, number: int) -> None:
        """In the writing transaction: tell the other hub processes once it commits (PostgreSQL only).

        This process's own subscribers are woken by :meth:`notify` after the commit.
        """
        if self._conninfo is not None:
            from ._database import run_sql

            run_sql(conn, _NOTIFY, {"payload": f"{self.prefix(channel)}{number}"})

    # ------------------------------------------------------------ PostgreSQL listener

    def _ensure_listener(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._conninfo is None:
            return
        task = self._listener
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._listener = loop.create_task(self._listen(self._conninfo), name="kachery-hub-listen")

    async def _listen(self, conninfo: str) -> None:
        import psycopg

        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            except Exception as e:  # database down: subscribers still re-read at each keep-alive
                log.warning("cannot listen for wake-ups on PostgreSQL (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {PG_CHANNEL}")
                    self._listening = True
                    delay = 0.05
                    self._wake_all()  # whatever was notified before we listened: everyone re-reads
                    async for note in conn.notifies():
                        self._on_payload(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("the PostgreSQL wake-up connection failed (%s); reconnecting", e)
            finally:
                self._listening = False
            self._wake_all()

    def _on_payload(self, payload: str) -> None:
        origin = _ORIGIN.match(payload)
        if origin is not None:
            if origin.group(1) == self.origin:
                return  # sent by this process, which woke its subscribers after the commit
            payload = payload[origin.end():]
        channel, _, number = payload.rpartition(" ")
        try:
            n = int(number)
        except ValueError:
            log.warning("ignored a malformed wake-up %r", payload[:200])
            return
        self.notify(channel, n)

    async def aclose(self) -> None:
        """Stop listening (a later subscription starts again)."""
        task, self._listener = self._listener, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
