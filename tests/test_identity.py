from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import kachery_core as kc
from kachery_core import _identity
from kachery_core.errors import IdentityError


def test_keys_are_created_in_the_kachery_cloud_format(kachery_dir: Path) -> None:
    client_id = kc.get_client_id()
    private = (kachery_dir / "private.pem").read_text().splitlines()
    public = (kachery_dir / "public.pem").read_text().splitlines()
    assert private[0] == "-----BEGIN PRIVATE KEY-----" and private[2] == "-----END PRIVATE KEY-----"
    assert public[0] == "-----BEGIN PUBLIC KEY-----" and public[2] == "-----END PUBLIC KEY-----"
    assert len(private) == 3 and len(public) == 3
    # kachery-cloud reads the raw key after a fixed DER prefix
    assert base64.b64decode(public[1]).hex() == "302a300506032b6570032100" + client_id
    assert base64.b64decode(private[1]).hex().startswith("302e020100300506032b657004220420")
    assert stat.S_IMODE((kachery_dir / "private.pem").stat().st_mode) == 0o600
    assert len(client_id) == 64 and kc.get_client_id() == client_id


def test_existing_kachery_cloud_keys_are_reused_never_overwritten(kachery_dir: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw_priv = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    raw_pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # exactly how kachery-cloud 0.4 wrote them: no trailing newline
    priv_pem = "-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(bytes.fromhex("302e020100300506032b657004220420") + raw_priv).decode() + "\n-----END PRIVATE KEY-----"
    pub_pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(bytes.fromhex("302a300506032b6570032100") + raw_pub).decode() + "\n-----END PUBLIC KEY-----"
    kachery_dir.mkdir(parents=True)
    (kachery_dir / "private.pem").write_text(priv_pem)
    (kachery_dir / "public.pem").write_text(pub_pem)
    assert kc.get_client_id() == raw_pub.hex()
    assert (kachery_dir / "private.pem").read_text() == priv_pem
    assert (kachery_dir / "public.pem").read_text() == pub_pem


def test_sign_and_verify() -> None:
    keys = _identity.load_client_keys()
    assert keys is not None
    sig = keys.sign(b"message")
    assert _identity.verify_signature(keys.client_id, b"message", sig)
    assert not _identity.verify_signature(keys.client_id, b"messagE", sig)
    assert not _identity.verify_signature(keys.client_id, b"message", "00" * 64)
    assert not _identity.verify_signature("not hex", b"message", sig)


def test_mismatched_or_broken_key_files_are_refused(kachery_dir: Path) -> None:
    kc.get_client_id()
    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (kachery_dir / "public.pem").write_bytes(other)
    with pytest.raises(IdentityError, match="does not match private.pem"):
        kc.get_client_id()
    (kachery_dir / "private.pem").write_text("garbage")
    with pytest.raises(IdentityError, match="not a PEM private key") as info:
        kc.get_client_id()
    assert info.value.path == str(kachery_dir / "private.pem")


def test_processes_racing_to_create_keys_agree(kachery_dir: Path) -> None:
    code = "import kachery_core as kc; print(kc.get_client_id())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ) for _ in range(6)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and ids == {kc.get_client_id()}
