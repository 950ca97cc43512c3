"""The client's Ed25519 key pair, compatible with kachery-cloud's key files.

``private.pem`` holds PKCS#8 and ``public.pem`` SubjectPublicKeyInfo, each as
three lines (BEGIN, one base64 line, END). The client ID is the hex of the raw
32-byte public key. An existing pair is always reused, never overwritten.
"""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _fs
from .errors import IdentityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported where it is used: it costs ~40 ms, and `import kachery_core` must stay cheap.


class ClientKeys:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def client_id(self) -> str:
        return public_key_hex(self.public_key)

    def sign(self, message: bytes) -> str:
        return self.private_key.sign(message).hex()


def public_key_hex(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@functools.lru_cache(maxsize=4096)
def _public_key(client_id: str) -> Any:
    """The key object of a client id (a hex public key), kept: a hub checks the same clients all day."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id))


def verify_signature(client_id: str, message: bytes, signature_hex: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(client_id).verify(bytes.fromhex(signature_hex), message)
    except (ValueError, InvalidSignature):
        return False
    return True


def _pem(kind: str, der: bytes) -> str:
    return f"-----BEGIN {kind}-----\n{base64.b64encode(der).decode()}\n-----END {kind}-----\n"


def _read_private_pem(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as e:
        raise IdentityError(str(path), f"not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(str(path), f"expected an Ed25519 key, found {type(key).__name__}")
    return key


def _create_private_pem(path: Path) -> None:
    """Write a new private key unless one exists; safe when processes race."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = _fs.tmp_path_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_pem("PRIVATE KEY", der))
        try:
            os.link(tmp, path)  # fails if another process made one first: theirs wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def load_client_keys(create: bool = True) -> ClientKeys | None:
    """The key pair of the kachery directory, created (mode 0600) when missing."""
    d = Path(_fs.get_kachery_cloud_dir())
    private_path = d / "private.pem"
    public_path = d / "public.pem"
    if not private_path.exists():
        if not create:
            return None
        _create_private_pem(private_path)
    from cryptography.hazmat.primitives import serialization

    keys = ClientKeys(_read_private_pem(private_path))
    der = keys.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected_public = _pem("PUBLIC KEY", der)
    try:
        existing = public_path.read_text()
    except FileNotFoundError:
        _fs.write_file_atomic(public_path, expected_public.encode())
    else:
        if existing.strip() != expected_public.strip():
            raise IdentityError(str(public_path), "does not match private.pem (refusing to overwrite either)")
    return keys


def get_client_id() -> str:
    """The 64-hex client ID (raw Ed25519 public key) of this kachery directory."""
    keys = load_client_keys(create=True)
    assert keys is not None
    return keys.client_id
