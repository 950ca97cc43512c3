"""The connection to a kachery hub: which hub, signed requests, sign-in.

Which hub, first found wins:

1. ``init(hub_url=...)`` in this process (for the current ``KACHERY_CLOUD_DIR``),
2. the ``KACHERY_HUB_URL`` environment variable,
3. ``hub.yaml`` in the kachery directory, written by a successful ``init``.

Every request is signed with the client key (see :mod:`._signing`) unless the
client is ephemeral (``KACHERY_CLOUD_EPHEMERAL``), which reads public projects
without a key or a sign-in. A client signs in once by presenting a token
(``init(token=...)`` or ``KACHERY_HUB_TOKEN``); the hub then knows its key.
With a token configured, the first request of a process signs in first if the
hub does not know the client yet, whatever that request is. That sign-in is
tried once per process and token: a token the hub refuses (expired, revoked,
unknown) is remembered and the client goes on unregistered, so public reads
keep working; a request that needed the sign-in then says why it failed.

Behind a load balancer a replica may die under a request: an idempotent one (:func:`idempotent`)
that meets a refused or dropped connection, a 502/503/504 or a broken session is sent again,
signed anew, a few times within about two seconds (:data:`RETRY_DELAYS`); any other fails at once.
"""

from __future__ import annotations

import hashlib
import json as _json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlparse

from . import _constants, _fs, _signing
from ._identity import ClientKeys, load_client_keys
from .errors import (
    ClockSkewError,
    HubAuthError,
    HubError,
    HubNotConfiguredError,
    HubNotFoundError,
    HubPermissionError,
    HubRequestError,
    HubServerError,
    HubUnavailableError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    import httpx2

# httpx2 and yaml are imported where used: `import kachery_core` must stay cheap.

_HUB_FILE = "hub.yaml"

# In-process state: the hub chosen by init() per kachery directory, and HTTP clients
# injected for a hub URL (an in-process ASGI test client, a client with a proxy...).
_chosen_url: dict[str, str] = {}
#: The token given to init(), with the hub it was given for, by kachery directory.
_chosen_token: dict[str, tuple[str, str]] = {}
#: KACHERY_HUB_TOKEN without KACHERY_HUB_URL: the hub it was first used with in this process.
_env_token_hub: dict[str, str] = {}
_injected: dict[str, httpx2.Client] = {}
_default_clients: dict[str, httpx2.Client] = {}
_me_cache: dict[tuple[str, str], dict[str, Any]] = {}
_keys_cache: dict[str, tuple[tuple[int, int, int], ClientKeys, str]] = {}
_direct: dict[str, bool] = {}
_plain: list[httpx2.Client] = []
# The first-use sign-in: (url, client ID, token) tried in this process, and the hub's refusal of
# a token, kept so that every later request neither tries it again nor fails for it.
_tokens_tried: set[tuple[str, str, str]] = set()
_tokens_refused: dict[tuple[str, str, str], HubAuthError] = {}
_first_use_lock = threading.Lock()
# Set in the thread that is signing in, whose own requests must not sign in first.
_signing_in = threading.local()
#: the hub's codes for a sign-in token it does not accept
TOKEN_REFUSALS = frozenset({"token_expired", "token_revoked", "invalid_token"})


def normalize_url(url: str) -> str:
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgumentError("hub_url", url, "expected http://HOST[:PORT] or https://HOST[:PORT]")
    return url.strip().rstrip("/")


def _dir_key() -> str:
    return str(_constants.kachery_cloud_dir())


def _hub_file() -> Path:
    return Path(_fs.get_kachery_cloud_dir()) / _HUB_FILE


def _saved_url() -> str | None:
    try:
        text = _hub_file().read_text()
    except FileNotFoundError:
        return None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) and url else None


def save_url(url: str) -> None:
    import yaml

    _fs.write_file_atomic(_hub_file(), yaml.safe_dump({"url": url}).encode())


def configured_url() -> str | None:
    """The hub URL in use, or None when no hub is configured."""
    url = _chosen_url.get(_dir_key()) or _constants.hub_url() or _saved_url()
    return normalize_url(url) if url else None


def choose(url: str, token: str | None, http_client: httpx2.Client | None) -> str:
    url = normalize_url(url)
    _chosen_url[_dir_key()] = url
    if token:
        _chosen_token[_dir_key()] = (url, token)
    if http_client is not None:
        _injected[url] = http_client
    return url


def forget_token() -> None:
    """Drop the token given to init() in this process (after signing out)."""
    _chosen_token.pop(_dir_key(), None)


def configured_token(url: str | None = None) -> str | None:
    """The sign-in token for hub ``url`` (default: the hub in use), or None.

    A token is sent only to the hub it was given for, so that switching hubs never
    hands one hub's token to another: the token given to init() goes to the hub named
    with it; KACHERY_HUB_TOKEN to the hub of KACHERY_HUB_URL, or without that variable
    to the first hub this process used it with.
    """
    url = normalize_url(url) if url else configured_url()
    if url is None:
        return None
    chosen = _chosen_token.get(_dir_key())
    if chosen is not None and chosen[0] == url:
        return chosen[1]
    token, env_url = _constants.hub_token(), _constants.hub_url()
    if not token:
        return None
    if env_url:
        return token if normalize_url(env_url) == url else None
    return token if _env_token_hub.setdefault(token, url) == url else None


def _token_name(url: str) -> str:
    chosen = _chosen_token.get(_dir_key())
    return "the token given to kachery_core.init()" if chosen is not None and chosen[0] == url else "KACHERY_HUB_TOKEN"


def anonymous_client(url: str) -> HubClient:
    """An unsigned client of ``url`` (no key, no sign-in, no token sent), over this process's HTTP client for it."""
    return HubClient(url, None, _http_client(url))


def _http_client(url: str) -> httpx2.Client:
    if url in _injected:
        return _injected[url]
    client = _default_clients.get(url)
    if client is None:
        import httpx2

        timeout = httpx2.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)
        client = _default_clients[url] = httpx2.Client(timeout=timeout, follow_redirects=False)
    return client


def plain_client() -> httpx2.Client:
    """An HTTP client for presigned object-store URLs (never injected, never signed)."""
    if not _plain:
        import httpx2

        _plain.append(httpx2.Client(timeout=httpx2.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)))
    return _plain[0]


def close_connections() -> None:
    """Close the HTTP clients this module opened (not injected ones)."""
    for client in [*_default_clients.values(), *_plain]:
        client.close()
    _default_clients.clear()
    _plain.clear()
    from ._session import close_sessions

    close_sessions()


def _raise_for(url: str, response: httpx2.Response) -> None:
    response.read()
    _raise_error(url, response.status_code, response.content)


def _raise_error(url: str, status: int, body: bytes) -> None:
    """The typed error of an error answer (its status and JSON body), over HTTP or a session."""
    try:
        err = _json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"the hub answered HTTP {status}: {body[:200].decode('utf-8', 'replace')!r}"
        err = {}
    if code == "clock_skew":
        raise ClockSkewError(url, message, skew_seconds=float(err.get("skew_seconds", 0.0)), status=status, code=code)
    cls: type[HubError]
    if status == 401:
        cls = HubAuthError
    elif status == 403:
        cls = HubPermissionError
    elif status == 404:
        cls = HubNotFoundError
    elif status >= 500:
        cls = HubServerError
    else:
        cls = HubRequestError
    raise cls(url, message, status=status, code=code)


#: Pauses (seconds) between the tries of an idempotent request that met a transient failure: four
#: tries in about 2 s, long enough for a load balancer to stop sending to a replica that died.
RETRY_DELAYS = (0.1, 0.5, 1.5)
#: What a load balancer answers when the replica it chose is gone or did not answer (and a hub too full to read).
TRANSIENT_STATUSES = frozenset({502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
#: POSTs that do what they do once however often they are sent: waits for jobs, and task requests
#: (idempotent when every task they ask for is a calculation: its job ID is the hash of its input).
_WAIT_PATH = re.compile(r"/api/projects/[^/]+/tasks/jobs/wait")
_REQUEST_PATH = re.compile(r"/api/projects/[^/]+/tasks/requests(/batch)?")
#: Where to upload a file's bytes (asked again: the same multipart upload, or one more single upload the
#: hub removes as abandoned), and its completion (sent again once done: the project's record of the file).
_UPLOAD_PATH = re.compile(r"/api/projects/[^/]+/files/[0-9a-f]{40}/(upload|complete)")
#: A feed append carrying an append ID: the hub stores it once however often it comes (see kachery_hub._feeds).
_APPEND_PATH = re.compile(r"/api/feeds/[^/]+/messages")


def idempotent(method: str, path: str, json: Any = None, content: bytes | Iterable[bytes] | None = None) -> bool:
    """Whether sending ``method path`` again after its answer was lost does no more than sending it once.

    GET, HEAD, OPTIONS and PUT are (a PUT stores a file's bytes by their hash, a mutable's value, a
    backend's registration); so are a wait for jobs, a request of calculations (one job per input,
    which a second request joins), a direct upload's target and completion, and a feed append that
    carries an append ID (stored once per ID). Nothing else is: a feed append without one, an action, a DELETE (its answer
    says whether it deleted), a backend's claim or completion (its own loop goes on after a lost
    answer, and a claimed job comes back when its lease lapses). A body that was a stream cannot be
    sent again.
    """
    if content is not None and not isinstance(content, bytes):
        return False
    if method in _IDEMPOTENT_METHODS:
        return True
    if method != "POST":
        return False
    if _WAIT_PATH.fullmatch(path) or _UPLOAD_PATH.fullmatch(path):
        return True
    appends = _APPEND_PATH.fullmatch(path) is not None
    if not appends and not _REQUEST_PATH.fullmatch(path):
        return False
    try:
        body = json if content is None else _json.loads(content)
    except ValueError:
        return False
    if appends:
        return isinstance(body, dict) and isinstance(body.get("append_id"), str)
    return isinstance(body, dict) and body.get("task_type") == "calculation"


def _transient_transport(e: Exception) -> bool:
    """A failure to reach the hub that another try may not meet: no connection, or one dropped
    before the answer. Not a timeout: the hub may be working on it, and waiting again doubles the wait."""
    import httpx2

    return isinstance(e, (httpx2.NetworkError, httpx2.RemoteProtocolError, httpx2.ConnectTimeout))


class HubClient:
    """Signed requests to one hub; ``keys=None`` for an ephemeral (anonymous) client."""

    def __init__(self, url: str, keys: ClientKeys | None, http: httpx2.Client, *, client_id: str | None = None) -> None:
        self.url = url
        self.keys = keys
        self.http = http
        self.client_id = client_id or (keys.client_id if keys is not None else None)

    @property
    def ephemeral(self) -> bool:
        return self.keys is None

    def _sign_in_first(self) -> None:
        """With a token configured, sign in before the first signed request of this process.

        The hub answers an unknown client's reads as an anonymous client's (public
        projects only), so a fresh computer given a token would not see its own
        private files until something else signed it in.
        """
        if self.keys is None or getattr(_signing_in, "active", False) or (self.url, str(self.client_id)) in _me_cache:
            return
        token = configured_token(self.url)
        if not token:
            return
        tried = (self.url, str(self.client_id), token)
        if tried in _tokens_tried:
            return
        with _first_use_lock:  # one sign-in per process, however many threads send their first request
            if tried in _tokens_tried or (self.url, str(self.client_id)) in _me_cache:
                return
            try:
                with self._signing_in_now():
                    self.me()  # registers with the token when the hub does not know this client (see json())
            except HubAuthError as e:
                if e.code not in TOKEN_REFUSALS:
                    raise
                # remembered by register(): go on unregistered, public projects stay readable
            _tokens_tried.add(tried)

    def _refusal(self) -> HubAuthError | None:
        """The hub's refusal of the configured token, when this process was given one."""
        token = configured_token(self.url)
        return _tokens_refused.get((self.url, str(self.client_id), token)) if token and self.keys is not None else None

    def _refused_token(self, e: HubError) -> HubAuthError | None:
        """``e`` said again with the reason, when it may come from the hub's refusal of the configured token."""
        refusal = self._refusal()
        if refusal is None:
            return None
        # What an unregistered client is told where a signed-in one might have had access.
        if not (e.code == "client_not_registered" or isinstance(e, HubPermissionError)
                or (isinstance(e, HubNotFoundError) and e.code in ("file_not_found", "feed_not_found"))):
            return None
        return HubAuthError(self.url, f"{e.message}; {_token_name(self.url)} was refused: {refusal.message}",
                            status=e.status, code=refusal.code)

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        body_sha1: str | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        ok_statuses: tuple[int, ...] = (),
        timeout: httpx2.Timeout | None = None,
    ) -> httpx2.Response:
        """Send one signed request; raises a :class:`HubError` for an error answer.

        An idempotent request (:func:`idempotent`) that meets a transient failure (no connection,
        a connection dropped before the answer, a 502/503/504) is sent again, signed anew, after
        each of :data:`RETRY_DELAYS`: a replica behind a load balancer died, another answers.
        """
        self._sign_in_first()
        import httpx2

        for delay in (*RETRY_DELAYS, None):
            request = self._signed_request(method, path, json, params, content, body_sha1, headers, timeout)
            try:
                # Redirects point at object stores: they are followed without the signature headers.
                response = self.http.send(request, stream=stream, follow_redirects=False)
            except httpx2.TransportError as e:
                if delay is None or not _transient_transport(e) or not idempotent(method, path, json, content):
                    raise HubUnavailableError(self.url, f"cannot reach the hub: {e}") from None
                time.sleep(delay)
                continue
            if (delay is None or response.status_code not in TRANSIENT_STATUSES or response.status_code in ok_statuses
                    or not idempotent(method, path, json, content)):
                break
            response.close()
            time.sleep(delay)
        if response.status_code >= 400 and response.status_code not in ok_statuses:
            try:
                _raise_for(self.url, response)
            except HubError as e:
                said = self._refused_token(e)
                if said is None:
                    raise
                raise said from None
            finally:
                response.close()
        return response

    def _signed_request(self, method: str, path: str, json: Any, params: dict[str, Any] | None,
                        content: bytes | Iterable[bytes] | None, body_sha1: str | None,
                        headers: dict[str, str] | None, timeout: httpx2.Timeout | None) -> httpx2.Request:
        """The request, signed now (a try of a retried request has a nonce of its own)."""
        request = self.http.build_request(
            method, self.url + path, json=json, params=params, content=content, headers=headers,
        )
        if timeout is not None:
            request.extensions["timeout"] = timeout.as_dict()
        if self.keys is not None:
            if body_sha1 is None:
                body_sha1 = hashlib.sha1(request.content).hexdigest()
            time_ms, nonce, client_id = _signing.now_ms(), _signing.new_nonce(), str(self.client_id)
            message = _signing.signing_message(
                method=method, host=request.headers["host"],
                path_and_query=request.url.raw_path.decode("ascii"), time_ms=time_ms,
                nonce=nonce, body_sha1=body_sha1, client_id=client_id,
            )
            request.headers[_signing.HEADER_CLIENT] = client_id
            request.headers[_signing.HEADER_TIME] = str(time_ms)
            request.headers[_signing.HEADER_NONCE] = nonce
            request.headers[_signing.HEADER_BODY_SHA1] = body_sha1
            request.headers[_signing.HEADER_SIGNATURE] = self.keys.sign(message)
        return request

    def json(self, method: str, path: str, *, session: bool = False, **kwargs: Any) -> Any:
        """A signed JSON request; signs in first if the hub does not know this client yet.

        ``session``: sent on this process's session with the hub when it offers one (see
        :mod:`kachery_core._session`; only the endpoints the hub serves on sessions), else over HTTP.
        ``on_part`` (with ``session``): called with each part of the answer the hub sends ahead of
        its last (see :meth:`kachery_core._session.HubSession.request`).
        """
        try:
            return self._exchange(method, path, session, kwargs)
        except HubAuthError as e:
            if e.code != "client_not_registered" or not configured_token(self.url):
                raise
            said = self._refused_token(e)
            if said is not None:
                raise said from None  # refused once already in this process: not tried again
        self.register()
        return self._exchange(method, path, session, kwargs)

    def _exchange(self, method: str, path: str, session: bool, kwargs: dict[str, Any]) -> Any:
        if session and self.keys is not None and self.url not in _injected and _constants.sessions_enabled():
            for delay in (*RETRY_DELAYS, None):
                try:
                    answer = self._on_session(self.keys, method, path, kwargs)
                except _SessionBroke as e:
                    # Sent again on a new session (or over HTTP) when that does what sending it once does.
                    if delay is None or not idempotent(method, path, kwargs.get("json"), kwargs.get("content")):
                        raise e.error from None
                    time.sleep(delay)
                    continue
                if answer is not _NO_SESSION:
                    return answer
                break
        kwargs = {k: v for k, v in kwargs.items() if k != "on_part"}  # (HTTP answers come whole)
        return self.send(method, path, **kwargs).json()

    def _on_session(self, keys: ClientKeys, method: str, path: str, kwargs: dict[str, Any]) -> Any:
        from . import _session

        self._sign_in_first()
        found = _session.session_for(self.url, self._host(), keys, str(self.client_id))
        if found is None:
            return _NO_SESSION
        try:
            if isinstance(found, _session.SessionRefused):
                _raise_error(self.url, found.status, found.body)
                return _NO_SESSION  # (an error answer always raises)
            body = kwargs.get("content")
            if body is None:
                value = kwargs.get("json")
                body = b"" if value is None else _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
            params = kwargs.get("params")
            timeout = kwargs.get("timeout")
            seconds = 600.0 if timeout is None or timeout.read is None else float(timeout.read)
            try:
                status, answer = found.request(method, path + ("?" + urlencode(params) if params else ""), body,
                                               seconds, on_part=kwargs.get("on_part"))
            except HubUnavailableError as e:
                if found.alive:  # no answer in time, or no room: the hub is there
                    raise
                raise _SessionBroke(e) from None
            if status >= 400:
                if status in TRANSIENT_STATUSES:
                    try:
                        _raise_error(self.url, status, answer)
                    except HubError as e:
                        raise _SessionBroke(e) from None
                _raise_error(self.url, status, answer)
        except HubError as e:
            said = self._refused_token(e)
            if said is None:
                raise
            raise said from None
        return _json.loads(answer)

    def _host(self) -> str:
        """The Host header this client's HTTP requests carry (what their signatures cover)."""
        host = _hosts.get(self.url)
        if host is None:
            host = _hosts[self.url] = self.http.build_request("GET", self.url).headers["host"]
        return host

    def register(self, sign_in_token: str | None = None) -> dict[str, Any]:
        """Bind this client's key to the user of a sign-in token."""
        if self.keys is None:
            raise HubAuthError(self.url, "an ephemeral client cannot sign in; unset KACHERY_CLOUD_EPHEMERAL")
        t = sign_in_token or configured_token(self.url)
        if not t:
            raise HubAuthError(
                self.url,
                f"this client ({str(self.client_id)[:12]}…) is not signed in to the hub; get a token "
                f"(open {self.url}/ or run `kachery-hub token create`) and call kachery_core.init(token=...)",
                code="client_not_registered",
            )
        try:
            with self._signing_in_now():
                info: dict[str, Any] = self.send("POST", "/api/clients", json={"token": t, "label": "kachery_core"}).json()
        except HubAuthError as e:
            if sign_in_token is None and e.code in TOKEN_REFUSALS:
                # the configured one: not tried again in this process, and named by later refusals
                _tokens_refused[(self.url, str(self.client_id), t)] = e
                _tokens_tried.add((self.url, str(self.client_id), t))
            raise
        _me_cache[(self.url, str(self.client_id))] = info
        _tokens_refused.pop((self.url, str(self.client_id), t), None)
        return info

    def me(self, refresh: bool = False) -> dict[str, Any]:
        """The hub's record of this client (user, default project); signs in if needed."""
        if self.keys is None:
            raise HubAuthError(self.url, "ephemeral clients have no account on the hub")
        key = (self.url, str(self.client_id))
        if refresh or key not in _me_cache:
            with self._signing_in_now():
                _me_cache[key] = self.json("GET", "/api/me")
        return _me_cache[key]

    @contextmanager
    def _signing_in_now(self) -> Iterator[None]:
        """The requests that sign in are not preceded by a sign-in of their own."""
        outer = getattr(_signing_in, "active", False)
        _signing_in.active = True
        try:
            yield
        finally:
            _signing_in.active = outer

    def direct_transfers(self) -> bool:
        """Whether file bytes go to presigned object-store URLs instead of through the hub."""
        if self.url not in _direct:
            _direct[self.url] = bool(self.send("GET", "/api/health").json().get("direct_transfers", False))
        return _direct[self.url]

    def forget(self) -> None:
        if self.keys is not None:
            _me_cache.pop((self.url, str(self.client_id)), None)


_NO_SESSION = object()
_hosts: dict[str, str] = {}


class _SessionBroke(Exception):
    """A session request met a transient failure (``error``): the session broke, or the hub was busy."""

    def __init__(self, error: HubError) -> None:
        super().__init__(error.message)
        self.error = error


def _client_keys() -> tuple[ClientKeys, str]:
    """This directory's key pair and client ID, parsed once while private.pem stays the same file."""
    path = _constants.kachery_cloud_dir() / "private.pem"
    try:
        st = os.stat(path)
        stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        stamp = None
    cached = _keys_cache.get(str(path))
    if cached is not None and stamp is not None and cached[0] == stamp:
        return cached[1], cached[2]
    keys = load_client_keys(create=True)
    assert keys is not None
    st = os.stat(path)
    client_id = keys.client_id
    _keys_cache[str(path)] = ((st.st_ino, st.st_mtime_ns, st.st_size), keys, client_id)
    return keys, client_id


def connect(what: str = "this operation", *, url: str | None = None) -> HubClient:
    """A client for the configured hub; raises :class:`HubNotConfiguredError` without one."""
    hub_url = normalize_url(url) if url else configured_url()
    if hub_url is None:
        raise HubNotConfiguredError(what)
    if _constants.ephemeral():
        return anonymous_client(hub_url)
    keys, client_id = _client_keys()
    return HubClient(hub_url, keys, _http_client(hub_url), client_id=client_id)


def connect_for(what: str, *, write: bool = False) -> HubClient:
    """A client for reading (ephemeral allowed) or, with ``write``, for writing (signed)."""
    return connect_signed(what) if write else connect(what)


def connect_signed(what: str) -> HubClient:
    client = connect(what)
    if client.ephemeral:
        raise HubAuthError(client.url, f"{what} is not possible in ephemeral mode (KACHERY_CLOUD_EPHEMERAL is set): "
                                       "ephemeral clients only read public projects")
    return client


def init(
    hub_url: str | None = None, token: str | None = None, *, http_client: httpx2.Client | None = None,
    wait: bool | None = None,
) -> dict[str, Any]:
    """Choose a hub and sign this client in to it; returns :func:`get_client_info`.

    ``hub_url`` defaults to ``KACHERY_HUB_URL`` (or the hub of a previous
    ``init``); ``token`` to ``KACHERY_HUB_TOKEN``. Without a token, a client
    the hub does not know yet prints a sign-in link and waits (polling the hub)
    until someone confirms it in a browser; ``wait=False`` raises instead. By
    default it waits only where someone can act on the link: in a notebook
    kernel or at a terminal, not in a script running unattended.
    Signing in binds this computer's key to the user, once; the hub is
    remembered in ``hub.yaml`` so later sessions need neither.
    """
    url = hub_url or configured_url()
    if not url:
        raise HubNotConfiguredError("kachery_core.init()")
    url = choose(url, token, http_client)
    client = connect("kachery_core.init()", url=url)
    if not client.ephemeral:
        if token or configured_token(url):
            client.register(token)
        else:
            try:
                client.me(refresh=True)
            except HubAuthError as e:
                if e.code != "client_not_registered" or not (_interactive() if wait is None else wait):
                    raise
                from ._signin import wait_for_browser_sign_in

                wait_for_browser_sign_in(url)
        save_url(url)
    return get_client_info()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    return bool(sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty())


def get_hub_url() -> str | None:
    """The hub this process uses (``init``/``use_hub``, ``KACHERY_HUB_URL``, or the last signed-in one), or None."""
    return configured_url()


def get_client_info() -> dict[str, Any]:
    """This client's ID, hub, user and default project (``user`` is None when not signed in).

    Never raises for an unreachable hub: ``hub_error`` then says what went wrong.
    """
    url = configured_url()
    ephemeral = _constants.ephemeral()
    info: dict[str, Any] = {
        "client_id": None if ephemeral else load_client_keys(create=True).client_id,  # type: ignore[union-attr]
        "hub_url": url, "ephemeral": ephemeral, "signed_in": False, "user": None,
        "default_project_id": None, "project_id": _constants.project_id(),
    }
    if url is None or ephemeral:
        return info
    try:
        me = connect(url=url).me()
    except HubAuthError:
        return info
    except HubUnavailableError as e:
        info["hub_error"] = e.message  # a status line should say so, not fail
        return info
    info.update(signed_in=True, user=me["user"], default_project_id=me["default_project_id"])
    if info["project_id"] is None:
        info["project_id"] = me["default_project_id"]
    return info
