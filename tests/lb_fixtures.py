"""Hub replicas behind a real load balancer: PostgreSQL, SeaweedFS, two ``kachery-hub serve``
processes and HAProxy (Debian's), all on free loopback ports, stopped by PID.

Every replica has the balancer's URL as its first public URL (signatures are bound to the
public URL, so one made through the balancer is good at every replica) and its own address
as a second one, so that a test can also talk to one replica directly. HAProxy balances
round-robin, checks ``/api/health``, passes WebSocket upgrades and long event streams
(``timeout tunnel``), and names the replica that answered in ``X-Kachery-Replica``.

Import the fixture into a test module by name: ``from lb_fixtures import cluster``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from hub_fixtures import S3_KEYS, _fresh_postgres_database, _s3_client
from hub_process import HubProcess, free_port, running

#: The response header HAProxy adds: which replica (``r1``, ``r2``) answered.
REPLICA_HEADER = "X-Kachery-Replica"
#: The hubs' task lease here (seconds): a job claimed through a replica that died comes back soon.
LEASE = 5.0

HAPROXY_CONFIG = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    # WebSocket sessions and feed event streams stay open: the tunnel timeout covers them.
    timeout tunnel 1h
    timeout http-keep-alive 10s
    # A replica that refuses the connection (it died): the request goes to another, as it was never sent.
    retries 3
    option redispatch 1

frontend hub
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /api/health
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2
    http-response set-header {header} %[srv_name]
{servers}
"""


class Replica(HubProcess):
    """A ``kachery-hub serve`` behind the balancer: public URLs the balancer's, then its own."""

    def __init__(self, data: Path, port: int, balancer_url: str, *extra_args: str) -> None:
        super().__init__(data, port, *extra_args, public_url=f"{balancer_url},http://127.0.0.1:{port}")
        self.balancer_url = balancer_url

    @property
    def printed_url(self) -> str:
        return self.balancer_url  # the first public URL is what it prints


@dataclass
class Cluster:
    """The balancer (``url``), the replicas behind it, and the storage options they share."""

    url: str
    replicas: list[Replica]
    args: list[str]
    env: dict[str, str]
    haproxy: subprocess.Popen[bytes]
    root: Path

    def token(self, email: str) -> str:
        return self.replicas[0].token(email)

    def replica_of(self, response: httpx2.Response) -> str:
        return response.headers.get(REPLICA_HEADER, "")

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index`` (a machine that died)."""
        self.replicas[index].stop(signal.SIGKILL)

    def restart(self, index: int) -> None:
        """Start replica ``index`` again and wait until the balancer sends to it."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            self.replicas[index].start()
        self.wait_balanced()

    def wait_balanced(self, timeout: float = 30.0) -> None:
        """Until the balancer has sent requests to every running replica."""
        want = {f"r{i + 1}" for i, r in enumerate(self.replicas) if r.proc is not None}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while not want <= seen:
            if time.monotonic() > deadline or self.haproxy.poll() is not None:
                raise AssertionError(f"the balancer sent to {sorted(seen)}, not to all of {sorted(want)}; "
                                     f"{(self.root / 'haproxy.log').read_text(errors='replace')[-2000:]}")
            try:
                r = httpx2.get(self.url + "/api/health", timeout=2)
                if r.status_code == 200:
                    seen.add(self.replica_of(r))
            except httpx2.TransportError:
                pass
            time.sleep(0.05)


def haproxy_path() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if found is None:
        pytest.skip("haproxy is not installed (bash dev.sh test installs Debian's)")
    return found


@contextmanager
def run_cluster(postgres_url: str, s3_endpoint: str, root: Path, replicas: int = 2, *, port: int | None = None,
                env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A new database and bucket, ``replicas`` hubs on them and HAProxy in front, all stopped at the end.

    ``port``: the balancer's (when a test must know its URL first, e.g. for a sign-in provider's
    callback); ``env``: more settings for every replica."""
    haproxy = haproxy_path()
    database = _fresh_postgres_database(postgres_url)
    bucket = "lb-" + secrets.token_hex(6)
    _s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    args = ["--database", database, "--storage", f"s3://{bucket}/blobs?endpoint_url={s3_endpoint}"]
    env = {**S3_KEYS, "AWS_EC2_METADATA_DISABLED": "true", "KACHERY_HUB_TASK_LEASE": str(LEASE), **(env or {})}
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    hubs = [Replica(root / f"replica-{i + 1}", free_port(), url, *args) for i in range(replicas)]
    config = root / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(
        port=port, header=REPLICA_HEADER,
        servers="\n".join(f"    server r{i + 1} 127.0.0.1:{h.port} check" for i, h in enumerate(hubs))))
    with ExitStack() as stack:
        for hub in hubs:
            stack.enter_context(running(hub, env=env))
        log = open(root / "haproxy.log", "wb")
        stack.callback(log.close)
        proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)

        def stop_haproxy() -> None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()

        stack.callback(stop_haproxy)
        cluster = Cluster(url=url, replicas=hubs, args=args, env=env, haproxy=proc, root=root)
        cluster.wait_balanced()
        yield cluster


@pytest.fixture(scope="module")
def cluster(postgres_server: str, s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas on one PostgreSQL database and one S3 bucket, behind HAProxy."""
    with run_cluster(postgres_server, s3_server, tmp_path_factory.mktemp("cluster")) as c:
        yield c
