"""Operations: Prometheus metrics at ``/metrics``, readiness at ``/api/ready``, request IDs and JSON logs.

Metrics (a registry per app, so many apps in one process do not clash)::

    kachery_hub_http_requests_total{method, route, status}      requests answered
    kachery_hub_http_request_duration_seconds{method, route}   until the answer ends (event streams left out)
    kachery_hub_file_bytes_total{direction, via}                file bytes uploaded/downloaded; via="hub"
                                                                when they passed through the hub, "store" when a
                                                                client moved them with a presigned URL
    kachery_hub_live_followers                                  event streams open (feed and task-job followers)
    kachery_hub_task_jobs{status="pending"|"started"}           queued and running jobs (one COUNT per scrape)
    kachery_hub_sessions                                        sessions open (``GET /api/session``)
    kachery_hub_session_requests_total{method, route, status}   requests answered on sessions
    kachery_hub_session_request_duration_seconds{method, route} until a session request's answer was sent

``route`` is the matched route's path template (``/api/feeds/{feed_id}/events``),
``unmatched`` for no route, never the requested path: labels stay few whatever
outsiders send, and no project id, email, hash or path appears. Methods outside
the standard ones count as ``other``. Who may read ``/metrics`` is
``Settings.metrics``: ``off`` (no such endpoint), ``local`` (the default: only a
client on a loopback address whose request was not forwarded by a proxy;
anyone else gets the 404 of an unknown endpoint) or ``public``. With several
worker processes (``serve --workers``), metrics are kept in files that each
scrape sums (prometheus-client's multiprocess mode).

Request IDs: every HTTP request gets one (16 hex digits), echoed in the
``X-Request-ID`` answer header and set on every log record made while it is
handled (:class:`RequestIdFilter`). An incoming ``X-Request-ID`` of at most 64
``[A-Za-z0-9._-]`` characters is kept only from a trusted proxy
(``Settings.trusted_proxies``), so one ID follows a request through the proxy's
log and the hub's. :class:`JsonFormatter` writes one JSON object per line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from ._state import HubState
from .errors import error_body

log = logging.getLogger("kachery_hub")
access_log = logging.getLogger("kachery_hub.access")

#: The request being handled; left set when it ends, so the 500 handler outside the middleware logs with it.
REQUEST_ID: ContextVar[str | None] = ContextVar("kachery_hub_request_id", default=None)
HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FORWARDED = (b"x-forwarded-for", b"forwarded")
#: prometheus-client keeps metrics in files under this folder when it is set (worker processes).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds a readiness check may take before its part is reported as timed out.
READY_TIMEOUT_SECONDS = 3.0
#: Where uvicorn's proxy-headers middleware would hide it: the TCP peer (see :class:`KeepPeer`).
PEER_KEY = "kachery_hub.peer"
_HUB_ATTR = "metrics"


class Metrics:
    """The app's metrics and the registry that holds them."""

    def __init__(self, hub: HubState) -> None:
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("kachery_hub_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("kachery_hub_http_request_duration_seconds", "Time until the answer ended "
                                 "(event streams left out)", ["method", "route"], buckets=_BUCKETS, registry=r)
        self.file_bytes = Counter("kachery_hub_file_bytes", "File bytes moved: through the hub (via=hub) or by "
                                  "clients with presigned URLs (via=store)", ["direction", "via"], registry=r)
        self.followers = Gauge("kachery_hub_live_followers", "Event streams open (feed and task-job followers)",
                               multiprocess_mode="livesum", registry=r)
        self.sessions = Gauge("kachery_hub_sessions", "Sessions open (GET /api/session)",
                              multiprocess_mode="livesum", registry=r)
        self.session_requests = Counter("kachery_hub_session_requests", "Requests answered on sessions, by route "
                                        "template and status", ["method", "route", "status"], registry=r)
        self.session_latency = Histogram("kachery_hub_session_request_duration_seconds", "Time until a session "
                                         "request was answered", ["method", "route"], buckets=_BUCKETS, registry=r)
        self.jobs = _JobCounts(hub)
        r.register(self.jobs)
        if not os.environ.get(MULTIPROC_ENV):
            ProcessCollector(registry=r)
        # (method, route, status) -> the two children to update: labels() costs a lock and a dict per call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._session_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float | None) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(method, route, str(status)),
                                               self.latency.labels(method, route))
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def observe_session(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._session_children.get(key)
        if children is None:
            children = self._session_children[key] = (self.session_requests.labels(method, route, str(status)),
                                                       self.session_latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition (call it from a worker thread: job counts query the database)."""
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder:
            return bytes(generate_latest(self.registry))
        from prometheus_client import multiprocess

        _forget_dead_processes(Path(folder))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        registry.register(self.jobs)
        return bytes(generate_latest(registry))


class _JobCounts(Collector):
    """Queued (pending) and running (started) task jobs, counted when scraped: the same from any replica."""

    _QUERY = text("SELECT status, COUNT(*) FROM task_jobs WHERE status IN ('pending', 'started') GROUP BY status")

    def __init__(self, hub: HubState) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("kachery_hub_task_jobs", "Task jobs queued (pending) and running (started)",
                                  labels=["status"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("kachery_hub_task_jobs", "Task jobs queued (pending) and running (started)",
                                   labels=["status"])
        counts = {"pending": 0, "started": 0}
        with self.hub.db.read() as conn:
            for status, count in conn.execute(self._QUERY):
                counts[str(status)] = int(count)
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


def _forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of worker processes that are gone (a killed worker's followers are gone with it)."""
    from prometheus_client import multiprocess

    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObserveRequests:
    """Pure ASGI middleware: a request ID, and per request one counter, one histogram and (JSON logs) one access line.

    The route label is read from ``scope["route"]``, which Starlette's router sets
    on the scope it was handed (the same dict) once a route matched.
    """

    def __init__(self, app: Any, metrics: Metrics, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.trusted = _TrustedPeers(trusted_proxies)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = None
        if self.trusted:
            peer = scope.get(PEER_KEY) or scope.get("client")
            if peer and self.trusted(peer[0]):
                for name, value in scope["headers"]:
                    if name == _HEADER_KEY:
                        if _ID_RE.fullmatch(value):
                            request_id = value.decode()
                        break
        if request_id is None:
            request_id = os.urandom(8).hex()
        REQUEST_ID.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status = 500  # an exception with no answer started: the error middleware outside answers 500
        streaming = False
        followers = self.metrics.followers

        async def observed_send(message: Any) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
                route = scope.get("route")
                if status == 200 and route is not None and getattr(route, "path", "").endswith("/events"):
                    streaming = True
                    followers.inc()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if streaming:
                followers.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            if method not in _METHODS:
                method = "other"
            seconds = time.perf_counter() - start
            self.metrics.observe(method, label, status, None if streaming else seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("%s %s %d %.1f ms", method, label, status, seconds * 1000, extra={
                    "method": method, "route": label, "status": status, "duration_ms": round(seconds * 1000, 3),
                    "client": client[0] if client else None})


class _TrustedPeers:
    """Whether an address is one of the trusted proxies (addresses, networks or ``*``); answers are cached."""

    def __init__(self, proxies: tuple[str, ...]) -> None:
        self.any = "*" in proxies
        self.networks = [ipaddress.ip_network(p, strict=False) for p in proxies if p != "*"]
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.any or bool(self.networks)

    def __call__(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
                known = self.any or any(address in n for n in self.networks)
            except ValueError:
                known = False
            if len(self._known) >= 4096:  # outsiders pick their addresses: keep the cache bounded
                self._known.clear()
            self._known[host] = known
        return known


class KeepPeer:
    """Outermost under uvicorn: keeps the TCP peer in the scope before its proxy-headers middleware replaces it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[PEER_KEY] = scope.get("client")
        await self.app(scope, receive, send)


def count_session(hub: HubState, delta: int) -> None:
    """A session opened (+1) or ended (-1)."""
    metrics: Metrics | None = getattr(hub, _HUB_ATTR, None)
    if metrics is not None:
        metrics.sessions.inc(delta)


def count_session_request(hub: HubState, method: str, route: str, status: int, seconds: float) -> None:
    """A request answered on a session: ``route`` is its route template (or ``unmatched``), as for HTTP."""
    metrics: Metrics | None = getattr(hub, _HUB_ATTR, None)
    if metrics is not None:
        metrics.observe_session(method if method in _METHODS else "other", route, status, seconds)


def count_upload(hub: HubState, size: int, *, direct: bool) -> None:
    """Count an upload's verified bytes."""
    metrics: Metrics | None = getattr(hub, _HUB_ATTR, None)
    if metrics is not None:
        metrics.file_bytes.labels("upload", "store" if direct else "hub").inc(size)


def count_download(hub: HubState, range_header: str | None, size: int, *, direct: bool) -> None:
    """Count the bytes of a download being answered: the whole file, or the ranges asked for (checked already)."""
    metrics: Metrics | None = getattr(hub, _HUB_ATTR, None)
    if metrics is None:
        return
    served = size
    if range_header is not None:
        try:
            served = sum(end - start for start, end in FileResponse._parse_range_header(range_header, size))
        except Exception:  # noqa: BLE001 (refused before any byte; nothing to count)
            served = 0
    metrics.file_bytes.labels("download", "store" if direct else "hub").inc(served)


def _is_local(scope: Any) -> bool:
    client = scope.get("client")
    if not client or any(name in _FORWARDED for name, _ in scope["headers"]):
        return False  # forwarded by a proxy on this machine: the client is elsewhere
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Readiness:
    """Whether the database and the byte store answer, each within :data:`READY_TIMEOUT_SECONDS`.

    Checks run in threads of their own, one at a time per part: a probe repeated
    while a store hangs waits on the check under way instead of starting another,
    so a dead store cannot use up the threads that serve requests.
    """

    def __init__(self, hub: HubState, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        self.hub = hub
        self.timeout = timeout
        self._running: dict[str, asyncio.Future[None]] = {}

    async def check(self) -> dict[str, str]:
        parts = {"database": self._check_database, "store": self._check_store}
        results = await asyncio.gather(*(self._run(name, work) for name, work in parts.items()))
        return dict(zip(parts, results))

    async def _run(self, name: str, work: Callable[[], None]) -> str:
        future = self._running.get(name)
        if future is None or future.done():
            future = self._running[name] = _in_thread(work)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            log.warning("readiness: the %s did not answer within %g s", name, self.timeout)
            return "timeout"
        except Exception as e:  # noqa: BLE001 (whatever the driver raises is a failure of that part)
            log.warning("readiness: the %s failed: %s: %s", name, type(e).__name__, e)
            return "failed"
        return "ok"

    def _check_database(self) -> None:
        with self.hub.db.read() as conn:
            conn.execute(text("SELECT 1")).scalar()

    def _check_store(self) -> None:
        from ._bytestore import LocalFolderStore
        from ._s3store import S3ByteStore

        store = self.hub.store
        if isinstance(store, LocalFolderStore):
            if not store.root.is_dir() or not os.access(store.root, os.W_OK | os.X_OK):
                raise OSError(f"the byte store folder {store.root} is missing or not writable")
        elif isinstance(store, S3ByteStore):
            store._check_bucket()


def _in_thread(work: Callable[[], None]) -> asyncio.Future[None]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    def run() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as e:  # noqa: BLE001 (handed to the waiting coroutine)
            error = e
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more
    # A daemon thread: a check hung on a dead server must not keep the process from exiting.
    threading.Thread(target=run, name="kachery-hub-ready", daemon=True).start()
    future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # never "never retrieved"
    return future


def install(app: FastAPI, hub: HubState) -> None:
    """Add the middleware, ``/api/ready`` and (unless ``metrics`` is off) ``/metrics`` to ``app``."""
    metrics = Metrics(hub)
    app.state.metrics = metrics
    setattr(hub, _HUB_ATTR, metrics)  # for the handlers that count file bytes (they hold the hub, not the app)
    app.add_middleware(ObserveRequests, metrics=metrics, trusted_proxies=hub.settings.trusted_proxies)
    readiness = Readiness(hub)

    async def ready() -> Response:
        parts = await readiness.check()
        if all(v == "ok" for v in parts.values()):
            return Response(json.dumps({"status": "ready", **parts}), media_type="application/json")
        failed = ", ".join(f"the {name} ({state})" for name, state in parts.items() if state != "ok")
        error = {"code": "not_ready", "message": f"the hub cannot serve requests: {failed} did not answer"}
        body = json.dumps({"status": "not_ready", **parts, "error": error})
        return Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "5"})

    app.add_api_route("/api/ready", ready, methods=["GET"], include_in_schema=False)
    mode = hub.settings.metrics
    if mode == "off":
        return

    async def scrape(request: Request) -> Response:
        if mode != "public" and not _is_local(request.scope):
            return Response(error_body("not_found", f"no such endpoint: GET {request.url.path}"), status_code=404,
                            media_type="application/json")
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the request being handled when the record was made, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


_ACCESS_FIELDS = ("method", "route", "status", "duration_ms", "client")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in _ACCESS_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)
