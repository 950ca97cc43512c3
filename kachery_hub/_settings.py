"""Hub settings, read from the environment in one place and injectable.

``Settings.from_environ(environ, **overrides)`` is what the CLI uses; tests
build ``Settings(data_dir=...)`` directly.

==============================  ======================================================
``KACHERY_HUB_DATA``            folder for the embedded database and file bytes
``KACHERY_HUB_DATABASE_URL``    SQLAlchemy URL (default ``sqlite:///<data>/hub.sqlite``)
``KACHERY_HUB_STORAGE_URL``     byte store (default ``file://<data>/blobs``)
``KACHERY_HUB_MAX_CLOCK_SKEW``  seconds a signed request's time may differ (default 300)
``KACHERY_HUB_OIDC_ISSUER``     OpenID Connect issuer for browser sign-in (default Google's)
``KACHERY_HUB_OIDC_CLIENT_ID``  the hub's client ID at that issuer; sign-in with it is off without one
``KACHERY_HUB_OIDC_CLIENT_SECRET``  the matching client secret
``KACHERY_HUB_ADMIN_EMAILS``    comma-separated emails that are hub admins when they sign in
``KACHERY_HUB_PUBLIC_URL``      comma-separated URLs clients reach the hub at (default: where it listens)
``KACHERY_HUB_RATE_LIMIT``      sign-in requests a minute per client address (default 30, bursts of
                                twice that; 0 turns the limit off)
``KACHERY_HUB_MAX_INFLIGHT_BODY_BYTES``  request body bytes all requests being read may hold at once
                                (default 64 MiB; one client address at most a quarter of it)
``KACHERY_HUB_BODY_TIMEOUT``    seconds a request body may make no progress before a 408 (default 30)
``KACHERY_HUB_TRUSTED_PROXIES`` comma-separated addresses or networks of reverse proxies whose
                                ``X-Forwarded-For``/``-Proto`` ``serve`` believes (default: none)
``KACHERY_HUB_FEED_KEEPALIVE``  seconds an idle feed event stream waits before a keep-alive, when it
                                also re-checks the reader's access (default 15)
``KACHERY_HUB_MAX_STREAMS_PER_ADDRESS``  feed event streams one client address may hold open at
                                once (default 256; past it, 429 ``too_many_streams``)
``KACHERY_HUB_TASK_LEASE``      seconds a task backend holds a job between renewals (default 20); a job
                                whose lease lapses is run again, at most 3 attempts in all
``KACHERY_HUB_METRICS``         who may read ``/metrics``: ``local`` (default: clients on a loopback address,
                                not forwarded by a proxy), ``public`` (anyone) or ``off`` (no such endpoint)
``KACHERY_HUB_LOG_FORMAT``      ``serve``'s log records: ``text`` (default) or ``json`` (one object a line,
                                with the request ID; see :mod:`kachery_hub._metrics`)
``KACHERY_HUB_GC_INTERVAL``     seconds between ``serve``'s garbage collections of file bytes no project
                                references (default 0: off; ``kachery-hub gc`` runs one; see :mod:`kachery_hub._gc`)
``KACHERY_HUB_S3_MULTIPART_THRESHOLD``  files bigger than this many bytes go to an S3 store as multipart
                                uploads, resumable part by part (default 100 MiB; at most 5 GiB, AWS's
                                single PUT; see :mod:`kachery_hub._s3store`)
``KACHERY_HUB_S3_PART_SIZE``    bytes a part of a multipart upload holds (default 64 MiB; 5 MiB to 5 GiB);
                                an upload uses ``ceil(size / 10000)`` when that is larger (10,000 parts at most)
==============================  ======================================================

Limits against anonymous abuse (fields of :class:`Settings`): request bodies
are counted as they arrive and refused with 413 past ``max_json_body_bytes``
(4 MiB, API) or ``max_form_body_bytes`` (64 KiB, browser pages), file uploads
excepted (they stream to the byte store and are checked against their hash);
``kachery-hub serve`` refuses a request line plus headers over
``max_header_bytes`` (64 KiB) with 431; the sign-in endpoints (``POST
/api/sign-in-requests``, ``POST /api/clients``, ``/auth/login``, ``POST
/sign-in/{rid}``, ``/?token=``, ``POST /``) share a token bucket per client address
(``rate_limit_per_minute``, ``rate_limit_burst``) and answer 429 with
``Retry-After`` when it is empty. Body bytes held by the requests being read
(uploads excepted) are budgeted: at most ``max_inflight_body_bytes`` (64 MiB)
in all, and a quarter of that (at least one ``max_json_body_bytes``) per client
address; a request whose bytes do not fit is answered 503 ``busy`` with
``Retry-After``, and its bytes are given back when it ends. A body with no
progress for ``body_read_timeout_seconds`` (30) is answered 408
``body_timeout``. An API request with no signature headers may not carry a body
(anonymous access only reads): 401 before any of it is read.

Client addresses (rate limits, body budget) are the TCP peer's unless the peer
is in ``trusted_proxies`` (IP addresses or networks, or ``*`` for any peer), whose
``X-Forwarded-For`` and ``X-Forwarded-Proto`` ``kachery-hub serve`` then believes.
None is trusted by default: otherwise any user of the hub's machine could name
any address through 127.0.0.1. Behind a reverse proxy, trust it, or every browser
is one address and the sign-in callback URL has the proxy's scheme.

Public URLs bind signatures to this hub: a client signs the host of the hub URL
it was given, and the hub accepts only signatures made for the host of one of
its public URLs, whatever the Host header (a reverse proxy may rewrite it).
``kachery-hub serve`` defaults them to :func:`default_public_urls` of its listen
address; given explicitly they replace that default. ``Settings`` built without
any (an embedded app) refuses every signed request: it cannot tell a request
meant for it from one replayed from another hub. A path in a public URL is a
prefix the proxy strips: the signed path is checked with it put back.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigurationError

ENV_DATA = "KACHERY_HUB_DATA"
ENV_DATABASE_URL = "KACHERY_HUB_DATABASE_URL"
ENV_STORAGE_URL = "KACHERY_HUB_STORAGE_URL"
ENV_MAX_CLOCK_SKEW = "KACHERY_HUB_MAX_CLOCK_SKEW"
ENV_OIDC_ISSUER = "KACHERY_HUB_OIDC_ISSUER"
ENV_OIDC_CLIENT_ID = "KACHERY_HUB_OIDC_CLIENT_ID"
ENV_OIDC_CLIENT_SECRET = "KACHERY_HUB_OIDC_CLIENT_SECRET"
ENV_ADMIN_EMAILS = "KACHERY_HUB_ADMIN_EMAILS"
ENV_PUBLIC_URL = "KACHERY_HUB_PUBLIC_URL"
ENV_RATE_LIMIT = "KACHERY_HUB_RATE_LIMIT"
ENV_MAX_INFLIGHT_BODY_BYTES = "KACHERY_HUB_MAX_INFLIGHT_BODY_BYTES"
ENV_BODY_TIMEOUT = "KACHERY_HUB_BODY_TIMEOUT"
ENV_TRUSTED_PROXIES = "KACHERY_HUB_TRUSTED_PROXIES"
ENV_FEED_KEEPALIVE = "KACHERY_HUB_FEED_KEEPALIVE"
ENV_MAX_STREAMS = "KACHERY_HUB_MAX_STREAMS_PER_ADDRESS"
ENV_TASK_LEASE = "KACHERY_HUB_TASK_LEASE"
ENV_GC_INTERVAL = "KACHERY_HUB_GC_INTERVAL"
ENV_METRICS = "KACHERY_HUB_METRICS"
ENV_LOG_FORMAT = "KACHERY_HUB_LOG_FORMAT"
ENV_S3_MULTIPART_THRESHOLD = "KACHERY_HUB_S3_MULTIPART_THRESHOLD"
ENV_S3_PART_SIZE = "KACHERY_HUB_S3_PART_SIZE"
METRICS_MODES = ("local", "public", "off")
LOG_FORMATS = ("text", "json")

GOOGLE_ISSUER = "https://accounts.google.com"

DEFAULT_DATA_DIR = "~/.kachery-hub"
#: Bodies of JSON requests (not file uploads) may not exceed this.
MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
#: Bodies of browser form posts (sign-in pages) may not exceed this.
MAX_FORM_BODY_BYTES = 64 * 1024
#: A request line plus headers may not exceed this (``kachery-hub serve``).
MAX_HEADER_BYTES = 64 * 1024
#: Sign-in requests a minute per client address; bursts of twice as many.
RATE_LIMIT_PER_MINUTE = 30
#: Request body bytes (uploads excepted) that the requests being read may hold at once.
MAX_INFLIGHT_BODY_BYTES = 64 * 1024 * 1024
#: A request body that makes no progress for this long is answered 408.
BODY_READ_TIMEOUT_SECONDS = 30.0
#: A feed's event stream sends a keep-alive (and re-checks the reader's access) after this long idle.
FEED_KEEPALIVE_SECONDS = 15.0
#: Feed event streams one client address may hold open at once.
MAX_STREAMS_PER_ADDRESS = 256
#: A backend holds a job it claimed this long, renewed while it works; a lapsed job is run again.
TASK_LEASE_SECONDS = 20.0
# Multipart uploads to S3 (AWS: single PUT <= 5 GiB, parts 5 MiB..5 GiB). 100 MiB, as AWS advises: past it
# an interrupted upload resumes part by part instead of from the start; the price is that the hub reads
# the object back once to verify its sha1 (a single PUT is checked by the store itself).
S3_MULTIPART_THRESHOLD = 100 * 1024 * 1024
S3_PART_SIZE = 64 * 1024 * 1024
_S3_MIN_PART, _S3_MAX_PUT = 5 * 1024 * 1024, 5 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    storage_url: str | None = None
    max_clock_skew_seconds: float = 300.0
    max_json_body_bytes: int = MAX_JSON_BODY_BYTES
    max_form_body_bytes: int = MAX_FORM_BODY_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_inflight_body_bytes: int = MAX_INFLIGHT_BODY_BYTES
    body_read_timeout_seconds: float = BODY_READ_TIMEOUT_SECONDS
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-* headers serve believes
    rate_limit_per_minute: float = RATE_LIMIT_PER_MINUTE
    rate_limit_burst: int | None = None  # default: twice the rate
    oidc_issuer: str = GOOGLE_ISSUER
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    admin_emails: tuple[str, ...] = ()
    public_urls: tuple[str, ...] = ()
    feed_keepalive_seconds: float = FEED_KEEPALIVE_SECONDS
    max_streams_per_address: int = MAX_STREAMS_PER_ADDRESS
    task_lease_seconds: float = TASK_LEASE_SECONDS
    gc_interval_seconds: float = 0.0  # 0: serve collects no garbage by itself (see _gc)
    metrics: str = "local"  # who may read /metrics: local, public or off
    log_format: str = "text"  # serve's log records: text or json
    s3_multipart_threshold: int = S3_MULTIPART_THRESHOLD  # bigger files: multipart uploads (S3 stores)
    s3_part_size: int = S3_PART_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        urls = tuple(dict.fromkeys(_public_url(u) for u in self.public_urls if u.strip()))
        object.__setattr__(self, "public_urls", urls)
        object.__setattr__(self, "admin_emails", tuple(e.strip().lower() for e in self.admin_emails if e.strip()))
        object.__setattr__(self, "trusted_proxies", tuple(dict.fromkeys(
            _trusted_proxy(p) for p in self.trusted_proxies if p.strip())))
        if self.oidc_client_id and not self.oidc_client_secret:
            raise ConfigurationError(
                f"an OpenID Connect client ID is set but no client secret ({ENV_OIDC_CLIENT_SECRET} or --oidc-client-secret)"
            )
        if not self.oidc_issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigurationError(f"the OpenID Connect issuer must be an https:// URL, not {self.oidc_issuer!r}")
        if not self.max_clock_skew_seconds > 0:
            raise ConfigurationError(f"max_clock_skew_seconds ({ENV_MAX_CLOCK_SKEW}) must be positive, "
                                     f"not {self.max_clock_skew_seconds!r}")
        if not 0 <= self.rate_limit_per_minute < float("inf"):
            raise ConfigurationError(f"rate_limit_per_minute ({ENV_RATE_LIMIT}) must be 0 (off) or more, "
                                     f"not {self.rate_limit_per_minute!r}")
        if self.rate_limit_burst is not None and self.rate_limit_burst < 1:
            raise ConfigurationError(f"rate_limit_burst must be 1 or more, not {self.rate_limit_burst!r}")
        for name in ("max_json_body_bytes", "max_form_body_bytes", "max_header_bytes"):
            if getattr(self, name) < 1024:
                raise ConfigurationError(f"{name} must be at least 1024, not {getattr(self, name)!r}")
        if self.max_inflight_body_bytes < max(self.max_json_body_bytes, self.max_form_body_bytes):
            raise ConfigurationError(f"max_inflight_body_bytes ({ENV_MAX_INFLIGHT_BODY_BYTES}) must hold at least one "
                                     f"largest body ({self.max_json_body_bytes}), not {self.max_inflight_body_bytes!r}")
        if not 0 < self.body_read_timeout_seconds < float("inf"):
            raise ConfigurationError(f"body_read_timeout_seconds ({ENV_BODY_TIMEOUT}) must be positive, "
                                     f"not {self.body_read_timeout_seconds!r}")
        if not 0 < self.feed_keepalive_seconds <= 3600:
            raise ConfigurationError(f"feed_keepalive_seconds ({ENV_FEED_KEEPALIVE}) must be more than 0 and at "
                                     f"most 3600, not {self.feed_keepalive_seconds!r}")
        if not 1 <= self.task_lease_seconds <= 3600:
            raise ConfigurationError(f"task_lease_seconds ({ENV_TASK_LEASE}) must be from 1 to 3600, "
                                     f"not {self.task_lease_seconds!r}")
        if self.metrics not in METRICS_MODES:
            raise ConfigurationError(f"metrics ({ENV_METRICS}) must be one of {', '.join(METRICS_MODES)}, "
                                     f"not {self.metrics!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigurationError(f"log_format ({ENV_LOG_FORMAT}) must be one of {', '.join(LOG_FORMATS)}, "
                                     f"not {self.log_format!r}")
        if not 0 <= self.gc_interval_seconds < float("inf"):
            raise ConfigurationError(f"gc_interval_seconds ({ENV_GC_INTERVAL}) must be 0 (off) or more, "
                                     f"not {self.gc_interval_seconds!r}")
        if not 0 <= self.s3_multipart_threshold <= _S3_MAX_PUT:
            raise ConfigurationError(f"s3_multipart_threshold ({ENV_S3_MULTIPART_THRESHOLD}) must be from 0 to "
                                     f"{_S3_MAX_PUT} (5 GiB, the largest single PUT), "
                                     f"not {self.s3_multipart_threshold!r}")
        if not _S3_MIN_PART <= self.s3_part_size <= _S3_MAX_PUT:
            raise ConfigurationError(f"s3_part_size ({ENV_S3_PART_SIZE}) must be from {_S3_MIN_PART} (5 MiB) to "
                                     f"{_S3_MAX_PUT} (5 GiB), not {self.s3_part_size!r}")
        if self.max_streams_per_address < 1:
            raise ConfigurationError(f"max_streams_per_address ({ENV_MAX_STREAMS}) must be 1 or more, "
                                     f"not {self.max_streams_per_address!r}")

    @cached_property  # both are read on every signed request
    def signed_hosts(self) -> tuple[str, ...]:
        """The Host a client signs for each public URL (lower case, default port left out)."""
        return tuple(_host_and_prefix(u)[0] for u in self.public_urls)

    @cached_property
    def signing_bases(self) -> tuple[tuple[str, str], ...]:
        """(host, path prefix) of each public URL, as a signature is checked against them."""
        return tuple(dict.fromkeys(_host_and_prefix(u) for u in self.public_urls))

    @property
    def resolved_rate_limit_burst(self) -> int:
        """How many sign-in requests one address may make at once: ``rate_limit_burst``, or twice the rate."""
        return self.rate_limit_burst or max(1, round(2 * self.rate_limit_per_minute))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.sqlite'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "blobs").as_uri()

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        skew = _env_number(env, ENV_MAX_CLOCK_SKEW, float, 300.0)
        rate = _env_number(env, ENV_RATE_LIMIT, float, float(RATE_LIMIT_PER_MINUTE))
        inflight = _env_number(env, ENV_MAX_INFLIGHT_BODY_BYTES, int, MAX_INFLIGHT_BODY_BYTES)
        body_timeout = _env_number(env, ENV_BODY_TIMEOUT, float, BODY_READ_TIMEOUT_SECONDS)
        keepalive = _env_number(env, ENV_FEED_KEEPALIVE, float, FEED_KEEPALIVE_SECONDS)
        streams = _env_number(env, ENV_MAX_STREAMS, int, MAX_STREAMS_PER_ADDRESS)
        lease = _env_number(env, ENV_TASK_LEASE, float, TASK_LEASE_SECONDS)
        gc_interval = _env_number(env, ENV_GC_INTERVAL, float, 0.0)
        threshold = _env_number(env, ENV_S3_MULTIPART_THRESHOLD, int, S3_MULTIPART_THRESHOLD)
        part_size = _env_number(env, ENV_S3_PART_SIZE, int, S3_PART_SIZE)
        base = cls(
            data_dir=Path(env.get(ENV_DATA) or DEFAULT_DATA_DIR),
            database_url=env.get(ENV_DATABASE_URL) or None,
            storage_url=env.get(ENV_STORAGE_URL) or None,
            max_clock_skew_seconds=skew,
            rate_limit_per_minute=rate,
            max_inflight_body_bytes=inflight,
            body_read_timeout_seconds=body_timeout,
            feed_keepalive_seconds=keepalive,
            max_streams_per_address=streams,
            task_lease_seconds=lease,
            gc_interval_seconds=gc_interval,
            s3_multipart_threshold=threshold,
            s3_part_size=part_size,
            metrics=(env.get(ENV_METRICS) or "local").strip().lower(),
            log_format=(env.get(ENV_LOG_FORMAT) or "text").strip().lower(),
            trusted_proxies=tuple((env.get(ENV_TRUSTED_PROXIES) or "").split(",")),
            oidc_issuer=env.get(ENV_OIDC_ISSUER) or GOOGLE_ISSUER,
            oidc_client_id=env.get(ENV_OIDC_CLIENT_ID) or None,
            oidc_client_secret=env.get(ENV_OIDC_CLIENT_SECRET) or None,
            admin_emails=tuple((env.get(ENV_ADMIN_EMAILS) or "").split(",")),
            public_urls=tuple((env.get(ENV_PUBLIC_URL) or "").split(",")),
        )
        return base.with_overrides(**overrides)


_Number = TypeVar("_Number", int, float)
_ASCII_NUMBER = {int: re.compile(r"[0-9]+"), float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}


def _env_number(env: Mapping[str, str], name: str, kind: type[_Number], default: _Number) -> _Number:
    """The number in variable ``name`` (``default`` when unset or empty): ASCII digits, finite, else refused."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    # ASCII only: int() and float() also take other scripts' digits, "1_000", "nan" and "inf".
    if _ASCII_NUMBER[kind].fullmatch(text) is None or not math.isfinite(value := kind(text)):
        whole = "whole " if kind is int else ""
        raise ConfigurationError(f"{name}={text!r} is not a {whole}number")
    return value


def _public_url(text: str) -> str:
    """``text`` checked and normalized: scheme and host in lower case, default port and final slash left out."""
    url = text.strip()
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1 or parts.username is not None
            or parts.password is not None or parts.query or parts.fragment or "@" in parts.netloc):
        raise ConfigurationError(
            f"a public URL must be http(s)://HOST[:PORT][/PREFIX] with no user, query or fragment, not {url!r} "
            f"({ENV_PUBLIC_URL} or --public-url)"
        )
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() else parts.hostname
    except UnicodeError:
        raise ConfigurationError(f"the host of public URL {url!r} is not a valid host name") from None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def _trusted_proxy(text: str) -> str:
    """``text`` checked as uvicorn's ``forwarded_allow_ips`` takes it: an IP address, a network, or ``*``."""
    value = text.strip()
    if value == "*":
        return value
    try:
        return str(ipaddress.ip_network(value, strict=False)) if "/" in value else str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigurationError(
            f"a trusted proxy must be an IP address, a network (10.0.0.0/8) or *, not {value!r} "
            f"({ENV_TRUSTED_PROXIES} or --trusted-proxies)"
        ) from None


def _host_and_prefix(public_url: str) -> tuple[str, str]:
    parts = urlsplit(public_url)
    return parts.netloc, parts.path


def default_public_urls(host: str, port: int) -> tuple[str, ...]:
    """The URLs a hub listening on ``host``:``port`` is reached at, by default.

    Loopback: its address and ``localhost``. All interfaces (``0.0.0.0``, ``::``):
    loopback and this machine's host name; clients using an IP address or
    another name need ``--public-url``. Any other address: that address.
    """
    def url(h: str) -> str:
        return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"

    if host == "127.0.0.1":
        return (url("127.0.0.1"), url("localhost"))
    if host == "localhost":
        return (url("localhost"), url("127.0.0.1"))
    if host == "::1":
        return (url("::1"), url("localhost"))
    if host in ("", "0.0.0.0", "::"):
        loopback = (url("127.0.0.1"), url("localhost")) + ((url("::1"),) if host == "::" else ())
        name = socket.gethostname().lower()
        return tuple(dict.fromkeys(loopback + ((url(name),) if name and name != "localhost" else ())))
    return (url(host),)
