"""Running the hub under uvicorn on a socket ``kachery-hub serve`` bound: one process or several workers; text or JSON logs.

With ``--workers N`` (N > 1) uvicorn's supervisor starts N processes that all
accept on the one socket; each builds its own app (database pool, byte store,
wake-ups) from the settings, restarts a worker that dies, and stops them all on
SIGTERM or SIGINT. That needs PostgreSQL: wake-ups then cross processes through
LISTEN/NOTIFY, as between replicas; the embedded SQLite default wakes only its
own process's followers, so it is refused. What each process keeps in memory is
per worker: the sign-in rate limit, the body budget and the event streams one
address may hold are each N times larger in all. Metrics are summed over the
workers (prometheus-client's multiprocess mode, in a folder made for the run).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import tempfile
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from ._headlimit import http_options
from ._metrics import MULTIPROC_ENV, KeepPeer
from ._sessions import MAX_HEAD_BYTES
from ._settings import Settings
from ._state import HubState


#: New objects between two young garbage collections of a serving hub process (Python's default: 700).
GC_YOUNG_THRESHOLD = 50_000


class HubConfig(uvicorn.Config):
    """uvicorn's configuration that builds the hub app itself, in each worker process when there are several.

    It is pickled to workers, so it holds settings and names, never the app, the
    hub state or the HTTP protocol class (made per process in :meth:`load`).
    """

    def __init__(self, settings: Settings, *, state: HubState | None = None, log_level: str = "warning",
                 workers: int = 1) -> None:
        self.hub_settings = settings
        self.hub_state = state  # one process only: the state the caller opened (not picklable)
        proxies = list(settings.trusted_proxies)
        json_logs = settings.log_format == "json"
        super().__init__(
            # X-Forwarded-* is believed from the configured proxies only (uvicorn's default trusts 127.0.0.1,
            # which would let any local user pick the address the rate limits count).
            "kachery_hub._app:create_app", log_level=log_level, lifespan="on", proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            # Feed event streams never end by themselves: on shutdown they get a few seconds, then are closed.
            timeout_graceful_shutdown=3, workers=workers,
            # Sessions (_sessions): a frame holds one request; few wait unread per socket.
            ws_max_size=settings.max_json_body_bytes + MAX_HEAD_BYTES, ws_max_queue=4,
            # JSON: the hub writes its own access lines, with route, status, duration and request ID.
            access_log=not json_logs, log_config=json_log_config(log_level) if json_logs else uvicorn.config.LOGGING_CONFIG,
        )
        self._choose_http()

    def configure_logging(self) -> None:
        super().configure_logging()
        from ._cli import _HideTokens

        # After uvicorn's setup, in every process: keep sign-in secrets out of access lines.
        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, _HideTokens) for f in access.filters):
            access.addFilter(_HideTokens())

    def load_app(self) -> Any:
        from ._app import create_app

        app = create_app(self.hub_settings, state=self.hub_state)
        # What start-up made (modules, the app, engines) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it. With 1,000 feed followers, full
        # collections here took ~200 ms every ~1.3 s, holding up every stream (bench_load_followers).
        gc.collect()
        gc.freeze()
        # A young collection every 50,000 new objects, not 700: a request's or a delivery's objects
        # are gone by then instead of being promoted, and full collections become rare. With 1,000
        # followers: delivery p99 272 -> 61 ms, the hub's CPU per append 88 -> 40 ms, the same RSS.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        return app

    def _choose_http(self) -> None:
        # Before any event loop runs: the protocol's self-test runs one of its own.
        options = http_options(self.hub_settings.max_header_bytes)
        self.http = options["http"]
        self.h11_max_incomplete_event_size = options.get("h11_max_incomplete_event_size",
                                                         self.h11_max_incomplete_event_size)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "http": "h11", "hub_state": None}  # the protocol class is made per process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._choose_http()

    def load(self) -> None:
        super().load()
        self.loaded_app = KeepPeer(self.loaded_app)  # outside uvicorn's proxy-headers middleware


def json_log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that writes every record as one JSON line on stderr."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json",
               "filters": ["request_id", "hide_tokens"]}
    quiet = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "kachery_hub._metrics.JsonFormatter"}},
        "filters": {"request_id": {"()": "kachery_hub._metrics.RequestIdFilter"},
                    "hide_tokens": {"()": "kachery_hub._cli._HideTokens"}},
        "handlers": {"json": handler},
        "loggers": {"uvicorn": quiet, "uvicorn.error": {"level": level.upper()},
                    "uvicorn.access": quiet, "kachery_hub": quiet},
    }


def run(settings: Settings, sock: socket.socket, *, state: HubState | None, log_level: str, workers: int) -> None:
    """Serve on ``sock``: in this process with ``state``, or in ``workers`` processes of their own."""
    if workers <= 1:
        uvicorn.Server(HubConfig(settings, state=state, log_level=log_level)).run(sockets=[sock])
        return
    # Each worker writes its metrics here and a scrape sums them; a fresh folder, removed at the end.
    folder = tempfile.mkdtemp(prefix="metrics-", dir=settings.data_dir)
    os.environ[MULTIPROC_ENV] = folder
    try:
        Multiprocess(HubConfig(settings, log_level=log_level, workers=workers), sockets=[sock]).run()
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
