"""A cheap HTTP/1.1 client for the load benchmarks: asyncio streams on keep-alive sockets, signed requests.

Not a benchmark itself. The load generators of ``bench_load_followers.py`` and
``bench_load_store.py`` share two cores with every server they measure, so they
do without httpx2's per-request machinery: a request is a few bytes written to a
socket, an answer its status, headers and body (``Content-Length`` or chunked).
Signatures are made by kachery_core's own signing code (:mod:`kachery_core._signing`),
with a fresh nonce for each request, as the client does.

Also: CPU seconds of processes from ``/proc/<pid>/stat`` (where the cores went).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kachery_core import _signing
from kachery_core._identity import ClientKeys

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def new_keys() -> ClientKeys:
    """A new client key pair, in memory only (a client computer of its own)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return ClientKeys(Ed25519PrivateKey.generate())


def signed_headers(keys: ClientKeys, method: str, host: str, target: str, body: bytes = b"",
                   body_sha1: str | None = None) -> dict[str, str]:
    """The five signature headers of a request (``target``: raw path and query), signed now."""
    body_sha1 = body_sha1 or hashlib.sha1(body).hexdigest()
    time_ms, nonce = _signing.now_ms(), _signing.new_nonce()
    message = _signing.signing_message(method=method, host=host, path_and_query=target, time_ms=time_ms,
                                       nonce=nonce, body_sha1=body_sha1, client_id=keys.client_id)
    return {_signing.HEADER_CLIENT: keys.client_id, _signing.HEADER_TIME: str(time_ms),
            _signing.HEADER_NONCE: nonce, _signing.HEADER_BODY_SHA1: body_sha1,
            _signing.HEADER_SIGNATURE: keys.sign(message)}


def request_bytes(method: str, host: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection to ``url``'s host; opened on first use, again after a close."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host_header = parts.netloc
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*self.address, limit=2**20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> None:
        if self.writer is None:
            await self._open()
        assert self.writer is not None
        self.writer.write(raw)

    async def head(self) -> tuple[int, dict[str, str]]:
        """The status and headers (lower-case names) of the next answer."""
        assert self.reader is not None
        try:
            block = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self.close()
            raise HttpError(f"connection closed before an answer: {e!r}") from None
        lines = block.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body(self, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        try:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                out = bytearray()
                while chunk := await self.chunk():
                    out += chunk
                return bytes(out)
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self.close()
            raise HttpError(f"connection closed in an answer's body: {e!r}") from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return data

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body (b"" at its end)."""
        assert self.reader is not None
        size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        await self.send(raw)
        status, headers = await self.head()
        return status, headers, await self.body(headers)


# ---------------------------------------------------------------- where the cores went


def cpu_seconds(pid: int, children_done: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (with ``children_done``: plus its exited, waited-for children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children_done:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def find_pid(*needles: str) -> int | None:
    """The first process whose command line holds every one of ``needles`` (arguments joined by spaces)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmd for n in needles):
                return int(entry.name)
    return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its exited children, and its live children (PostgreSQL's backends)."""
    return cpu_seconds(pid, children_done=True) + sum(cpu_seconds(c) for c in children_of(pid))


def pg_transactions(database: str) -> int:
    """Transactions committed or rolled back in ``database`` so far (``pg_stat_database``; 0 without one)."""
    if not database:
        return 0
    import psycopg

    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                           (name,)).fetchone()
    return int(row[0]) if row else 0


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def loads(body: bytes) -> Any:
    import json

    return json.loads(body)
