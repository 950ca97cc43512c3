"""A rate limit per client address on the sign-in endpoints, as pure ASGI middleware.

The endpoints anyone may call to sign in (``POST /api/sign-in-requests``,
``POST /api/clients``, ``GET /auth/login``, ``POST /sign-in/{rid}``, the
token pages ``/?token=...`` and ``POST /``) are where tokens would be guessed
and the database flooded with sign-in requests. Each client address has one
token bucket for all of them: ``burst`` tokens, refilled at ``per_minute``; a
request takes a token, and one that finds none is answered 429 with the hub's
JSON error body and ``Retry-After`` (seconds until a token is back).

The address is the ASGI client: the peer, or what uvicorn takes from
``X-Forwarded-For`` when the peer is one of the hub's trusted proxies
(``Settings.trusted_proxies``; ``kachery-hub serve`` trusts none by default, so
no local user can pick an address), so behind a trusted reverse proxy each
browser counts on its own. An IPv6 address counts by its /64, which one host
usually has whole. At most ``max_clients`` addresses are tracked, the least
recently seen forgotten first, so the limiter's memory is bounded whatever the
number of addresses.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starlette.datastructures import QueryParams

from .errors import send_error

#: Addresses tracked at once (about 100 bytes each).
MAX_CLIENTS = 50_000

_SIGN_IN_PATHS = {("POST", "/api/sign-in-requests"), ("POST", "/api/clients"), ("GET", "/auth/login"),
                  ("HEAD", "/auth/login"), ("POST", "/")}


def is_sign_in(method: str, path: str, query_string: bytes) -> bool:
    """Whether a request starts or completes a sign-in (and so counts against the limit)."""
    if (method, path) in _SIGN_IN_PATHS:
        return True
    if method == "POST" and path.startswith("/sign-in/"):
        return True
    # /?token=...: the page that offers to sign a browser in with a token. The query is parsed as the
    # page parses it (names percent-decoded: ?%74oken= is ?token=).
    return method in ("GET", "HEAD") and path == "/" and bool(query_string) and "token" in QueryParams(query_string)


def client_key(address: str) -> str:
    """What a client address counts as: an IP address, an IPv6 address's /64, else the text as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (a test client, a Unix socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RateLimiter:
    """Token buckets by client address; ``take`` spends one."""

    def __init__(self, per_minute: float, burst: int, *, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not per_minute > 0 or burst < 1 or max_clients < 1:
            raise ValueError("a rate limiter needs a positive rate, burst and number of clients")
        self.per_minute = per_minute
        self.burst = burst
        self._per_second = per_minute / 60.0
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> float:
        """Spend a token of ``address``: 0.0 if it had one, else the seconds until it will."""
        key = client_key(address)
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self._per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._per_second
        self._buckets[key] = (tokens, now)  # last: the most recently seen
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimitSignIns:
    """ASGI middleware: sign-in requests over the client's allowance are answered 429."""

    def __init__(self, app: Any, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_sign_in(scope["method"], scope["path"], scope.get("query_string", b"")):
            client = scope.get("client")
            wait = self.limiter.take(str(client[0]) if client else "")
            if wait > 0:
                retry = max(1, math.ceil(wait))
                message = (f"too many sign-in requests from this address (at most {self.limiter.per_minute:g} a minute, "
                           f"{self.limiter.burst} at once); retry in {retry} s")
                await send_error(send, 429, "rate_limited", message, {"Retry-After": str(retry)})
                return
        await self.app(scope, receive, send)
