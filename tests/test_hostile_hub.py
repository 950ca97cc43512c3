"""What a hostile hub (or the object store it redirects to) can make a client do: little.

The hub here is a stand-in that answers like a hub and misbehaves on purpose.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import kachery_core as kc

SHA1 = "ab" * 20
SENT_MIB = 256


class _Flooding(BaseHTTPRequestHandler):
    """A hub whose file holds 1,000 bytes, and which answers any range with 256 MiB."""

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/health":
            self._json({"status": "ok", "api_version": 1, "direct_transfers": False})
        elif self.path == f"/api/files/{SHA1}/info":
            self._json({"sha1": SHA1, "size": 1000, "label": None, "project_id": "p", "created_at": 0})
        else:
            self.send_response(206)
            self.send_header("Content-Length", str(SENT_MIB << 20))
            self.end_headers()
            block = b"\0" * (1 << 20)
            try:
                for _ in range(SENT_MIB):
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flooding_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flooding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("KACHERY_HUB_URL", url)
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        from kachery_core import _hub

        _hub.close_connections()


def test_a_range_answered_with_far_more_bytes_is_refused_without_reading_them(flooding_hub: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(kc.HubRequestError, match="asked for 1 bytes"):
            kc.load_bytes(f"sha1://{SHA1}", 0, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB held for a 1-byte range"
