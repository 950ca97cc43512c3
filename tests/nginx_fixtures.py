"""nginx (Debian's) terminating TLS in front of one hub under a path prefix, on free loopback ports.

The ``location /kachery/ { ... }`` block nginx runs is the one ``docs/deploy.md`` shows
(section "Under a path prefix"), read from there with only the hub's address put in:
what the guide tells a lab to write is what the tests prove works. The certificate is
made here: a test CA and a ``localhost`` / ``127.0.0.1`` certificate it signs
(``cryptography``); clients trust the CA through ``SSL_CERT_FILE``.

nginx runs in the foreground with its own config, pid file, logs and temp folders in the
test's folder, and is stopped by its PID. Tests skip (saying why) only where there is no
nginx binary (``bash dev.sh setup`` installs Debian's ``nginx-light``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY_GUIDE = REPO / "docs" / "deploy.md"
#: The path prefix the guide serves the hub under, and the hub address its sample config names.
PREFIX = "/kachery"
GUIDE_HUB_ADDRESS = "127.0.0.1:8555"

NGINX_CONFIG = """\
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
{user}
events {{
    worker_connections 1024;
}}

http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/temp/body;
    proxy_temp_path {root}/temp/proxy;
    fastcgi_temp_path {root}/temp/fastcgi;
    uwsgi_temp_path {root}/temp/uwsgi;
    scgi_temp_path {root}/temp/scgi;

    # As in the guide's server block: WebSocket sessions pass the upgrade on.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate     {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;

{location}
    }}
}}
"""


def nginx_path() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        pytest.skip("nginx is not installed (bash dev.sh setup installs Debian's nginx-light)")
    return found


def guide_location() -> str:
    """The ``location /kachery/`` block of docs/deploy.md's "Under a path prefix" section."""
    text = DEPLOY_GUIDE.read_text()
    section = text[text.index("### Under a path prefix"):]
    found = re.search(r"```nginx\n(location " + re.escape(PREFIX) + r"/ \{\n.*?\n\})\n```", section, re.S)
    assert found, "docs/deploy.md has no nginx location block under 'Under a path prefix'"
    assert GUIDE_HUB_ADDRESS in found.group(1), found.group(1)
    return found.group(1)


def make_certificate(folder: Path) -> Path:
    """A test CA (``ca.pem``, returned) and a certificate it signs for localhost and 127.0.0.1
    (``cert.pem``, ``key.pem``) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kachery test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (folder / "key.pem").chmod(0o600)
    return folder / "ca.pem"


@dataclass
class Nginx:
    """nginx at ``https://localhost:{port}``, passing ``/kachery/`` to the hub; ``ca`` is the CA file to trust."""

    port: int
    ca: Path
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The hub's public URL through nginx (no final slash)."""
        return f"https://localhost:{self.port}{PREFIX}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def log(self) -> str:
        return "".join((self.root / name).read_text(errors="replace")[-3000:]
                       for name in ("error.log", "access.log") if (self.root / name).exists())


@contextmanager
def run_nginx(root: Path, port: int, hub_address: str) -> Iterator[Nginx]:
    """nginx on 127.0.0.1:``port`` with TLS, the guide's prefix location pointing at ``hub_address``."""
    binary = nginx_path()
    root.mkdir(parents=True, exist_ok=True)
    (root / "temp").mkdir(exist_ok=True)
    ca = make_certificate(root)
    location = guide_location().replace(GUIDE_HUB_ADDRESS, hub_address)
    # As root, nginx's workers would switch to "nobody", which cannot enter the test's folder.
    user = "user root;" if os.geteuid() == 0 else ""
    config = root / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(root=root, port=port, user=user,
                                          location="\n".join("        " + line for line in location.splitlines())))
    log = open(root / "nginx.out", "wb")
    proc = subprocess.Popen([binary, "-p", str(root), "-c", str(config), "-e", str(root / "error.log")],
                            stdout=log, stderr=subprocess.STDOUT)
    nginx = Nginx(port, ca, root, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited with {proc.returncode}: "
                                     f"{(root / 'nginx.out').read_text(errors='replace')}{nginx.log()}")
            try:
                if httpx2.get(nginx.url + "/api/health", verify=nginx.ssl_context(), timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not pass /api/health on to the hub: {nginx.log()}")
            time.sleep(0.05)
        yield nginx
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # nginx's fast shutdown; the workers exit with the master
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
