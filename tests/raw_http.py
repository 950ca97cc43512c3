"""Hand-built, signed HTTP requests to a real hub process, for the hostile tests.

A request is written to a socket as is (no normalization of the path, the body
sent in pieces and cut short when the hub answers early), so anything a client
could send reaches uvicorn's parser. :func:`running_hub` starts the hub a test
module shares, on SQLite or PostgreSQL, with users signed in by keys of their own.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hub_fixtures import _fresh_postgres_database, new_keys, signed_headers
from hub_process import HubProcess, free_port, running

from kachery_core._identity import ClientKeys


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """The error code of the hub's JSON error body (asserting it is one, with a message)."""
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers, self.body[:300])
        error = self.json()["error"]
        assert set(error) >= {"code", "message"} and error["message"], error
        return str(error["code"])

    @property
    def message(self) -> str:
        return str(self.json()["error"]["message"])


@dataclass
class RawHub:
    """A hub process and the keys its users sign requests with."""

    proc: HubProcess
    keys: dict[str, ClientKeys]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.proc.port}"

    def call(self, method: str, path: str, body: bytes | Any = b"", *, who: str | None = "alice",
             headers: dict[str, str] | None = None, content_type: str | None = "application/json",
             timeout: float = 60) -> Answer:
        """``method path`` sent as is (no normalization), signed by ``who`` (None: unsigned); a body that is
        not bytes is sent as JSON.

        The body goes in pieces, and stops as soon as the hub answers (it may refuse early and close).
        """
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        h = {"Host": self.host}
        if who is not None:
            h.update(signed_headers(self.keys[who], method, path, body, host=self.host))
        if (body or method in ("POST", "PUT")) and content_type is not None:
            h["Content-Type"] = content_type
        h.update(headers or {})
        h["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in h.items()) + b"Connection: close\r\n\r\n"
        sock = socket.create_connection(("127.0.0.1", self.proc.port), timeout=timeout)
        with sock:
            try:
                sock.sendall(head)
                for i in range(0, len(body), 64 * 1024):
                    if select.select([sock], [], [], 0)[0]:
                        break  # answered before the whole body was sent
                    sock.sendall(body[i:i + 64 * 1024])
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered and closed; the answer is still to be read
            r = http.client.HTTPResponse(sock)
            r.begin()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())


def register_client(hub: HubProcess, keys: ClientKeys, email: str) -> str:
    """Registers ``keys`` as a client of ``email`` (a token the hub made); its default project."""
    token = hub.token(email)
    body = json.dumps({"token": token, "label": "hostile tests"}).encode()
    host = f"127.0.0.1:{hub.port}"
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
    try:
        conn.request("POST", "/api/clients", body=body, headers={
            "Host": host, "Content-Type": "application/json",
            **signed_headers(keys, "POST", "/api/clients", body, host=host)})
        r = conn.getresponse()
        info = json.loads(r.read())
        assert r.status == 200, info
    finally:
        conn.close()
    return str(info["default_project_id"])


@contextmanager
def running_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str,
                env: Mapping[str, str], users: Iterable[str]
                ) -> Iterator[tuple[HubProcess, dict[str, ClientKeys], dict[str, str]]]:
    """A hub process on the database ``request.param`` names ("sqlite" or "postgresql", a fresh database of
    the ``postgres_server`` fixture), each of ``users`` registered as ``<user>@example.org`` with keys of
    its own: (the hub, each user's keys, each user's default project)."""
    args = []
    if request.param == "postgresql":
        args = ["--database", _fresh_postgres_database(request.getfixturevalue("postgres_server"))]
    proc = HubProcess(tmp_path_factory.mktemp(name) / "hub-data", free_port(), *args)
    with running(proc, env=dict(env)):
        keys = {who: new_keys() for who in users}
        projects = {who: register_client(proc, k, f"{who}@example.org") for who, k in keys.items()}
        yield proc, keys, projects
