"""How a client signs a hub request; shared by the client and the hub.

A signed request carries five headers::

    X-Kachery-Client     the 64-hex client ID (raw Ed25519 public key)
    X-Kachery-Time       the client's clock, milliseconds since the epoch
    X-Kachery-Nonce      32 random hex digits, never reused
    X-Kachery-Body-Sha1  sha1 of the request body (of b"" when there is none)
    X-Kachery-Signature  Ed25519 signature of :func:`signing_message`

The signature covers the method, the host of the hub URL the client was given
(as its Host header says it: lower case, default port left out), the raw path
with its query, the body hash, the time and the nonce, so a request cannot be
altered, moved to another endpoint, or replayed (the hub remembers nonces for
as long as their time is acceptable, failed requests' included). Nor can it be
moved to another hub: a hub accepts only signatures for the hosts of its own
public URLs, whatever Host header reaches it through a proxy. For a file
upload the body hash is the file's sha1, which the hub checks while the bytes
stream in.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

HEADER_CLIENT = "X-Kachery-Client"
HEADER_TIME = "X-Kachery-Time"
HEADER_NONCE = "X-Kachery-Nonce"
HEADER_BODY_SHA1 = "X-Kachery-Body-Sha1"
HEADER_SIGNATURE = "X-Kachery-Signature"

SIGNING_VERSION = "kachery-request-v1"
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()

CLIENT_ID_RE = re.compile(r"^[0-9a-f]{64}$")
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{128}$")


def signing_message(
    *, method: str, host: str, path_and_query: str, time_ms: int, nonce: str, body_sha1: str, client_id: str
) -> bytes:
    return "\n".join(
        [SIGNING_VERSION, method.upper(), host.lower(), path_and_query, str(time_ms), nonce, body_sha1, client_id]
    ).encode("utf-8")


def new_nonce() -> str:
    return os.urandom(16).hex()


def now_ms() -> int:
    return int(time.time() * 1000)
