"""A sign-in token goes only to the hub it was given for: switching hubs never hands it to another one.

The other hub here is a stand-in that answers as a hub whose clients are not signed in
and records every request it receives, as a hostile hub's operator would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from hub_process import HubProcess, forget_hubs, real_hub  # noqa: E402,F401


class _Recorder(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def _answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.received.append(f"{self.requestline}\n{self.headers}".encode() + self.rfile.read(length))
        if self.path == "/api/health":
            self._answer(200, {"status": "ok", "api_version": 1, "direct_transfers": False})
        else:
            self._answer(401, {"error": {"code": "client_not_registered", "message": "not signed in here"}})

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_hub() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        forget_hubs()


def test_a_token_given_to_init_never_goes_to_the_next_hub(
        real_hub: HubProcess, other_hub: tuple[str, list[bytes]], tmp_path: Path) -> None:
    token = real_hub.token("ada@example.org")
    kc.init(hub_url=real_hub.url, token=token)
    url, received = other_hub
    with pytest.raises(kc.HubAuthError):
        kc.init(hub_url=url, wait=False)
    kc.use_hub(url)
    with pytest.raises(kc.HubError):
        kc.get_mutable("k")
    assert received, "the other hub was asked"
    assert not [r for r in received if token.encode() in r]
    # Back on the hub it was given for, the token still serves.
    kc.use_hub(real_hub.url)
    kc.set_mutable("k", "v")
    assert kc.get_mutable("k") == "v"


def test_the_environment_token_goes_only_to_the_environment_hub(
        real_hub: HubProcess, other_hub: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    token = real_hub.token("ada@example.org")
    monkeypatch.setenv("KACHERY_HUB_URL", real_hub.url)
    monkeypatch.setenv("KACHERY_HUB_TOKEN", token)
    kc.set_mutable("k", "v")  # the first use signs in with the token
    url, received = other_hub
    kc.use_hub(url)
    assert kc.get_client_info()["signed_in"] is False
    with pytest.raises(kc.HubError):
        kc.get_mutable("k")
    assert received and not [r for r in received if token.encode() in r]


def test_an_environment_token_without_a_hub_url_stays_with_its_first_hub(
        real_hub: HubProcess, other_hub: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    token = real_hub.token("ada@example.org")
    monkeypatch.setenv("KACHERY_HUB_TOKEN", token)
    kc.init(hub_url=real_hub.url)
    url, received = other_hub
    with pytest.raises(kc.HubAuthError):
        kc.init(hub_url=url, wait=False)
    assert received and not [r for r in received if token.encode() in r]
