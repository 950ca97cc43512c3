"""Parse and format kachery URIs.

``sha1://<40 hex>[?label=<percent-encoded>][&location=<absolute path>]``
names content by its sha1; ``kachery-feed://<feed id>`` names a feed.
Anything else raises :class:`~kachery_core.errors.InvalidURIError`, never
returns None.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qsl, quote

from .errors import InvalidURIError, UnknownURISchemeError

_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_sha1(value: str) -> bool:
    return bool(_SHA1_RE.match(value))


class Sha1URI(NamedTuple):
    sha1: str
    label: str | None = None
    location: str | None = None

    def __str__(self) -> str:
        return format_sha1_uri(self.sha1, label=self.label, location=self.location)


def format_sha1_uri(sha1: str, *, label: str | None = None, location: str | None = None) -> str:
    if not is_sha1(sha1):
        raise InvalidURIError(f"sha1://{sha1}", "the hash must be 40 lowercase hex digits")
    params = []
    if label is not None:
        params.append("label=" + quote(label, safe=""))
    if location is not None:
        if not location.startswith("/"):
            raise InvalidURIError(f"sha1://{sha1}", f"location must be an absolute path, not {location!r}")
        params.append("location=" + quote(location, safe="/"))
    return f"sha1://{sha1}" + ("?" + "&".join(params) if params else "")


def parse_sha1_uri(uri: str) -> Sha1URI:
    if not isinstance(uri, str):
        raise InvalidURIError(repr(uri), f"expected a string, got {type(uri).__name__}")
    m = _SCHEME_RE.match(uri)
    if not m:
        raise InvalidURIError(uri, "expected sha1://<40 hex digits>")
    scheme = m.group(1)
    if scheme != "sha1":
        raise UnknownURISchemeError(uri, scheme)
    rest = uri[len("sha1://"):]
    hash_part, _, query = rest.partition("?")
    hash_part = hash_part.rstrip("/")
    # kachery-cloud wrote "sha1://<hash>/<filename>" at times; the hash is the first segment.
    hash_part = hash_part.split("/", 1)[0]
    if not is_sha1(hash_part):
        if re.fullmatch(r"[0-9A-Fa-f]{40}", hash_part):
            raise InvalidURIError(uri, "the hash must be lowercase hex")
        raise InvalidURIError(uri, f"{hash_part!r} is not a sha1 (40 hex digits)")
    label = location = None
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise InvalidURIError(uri, f"malformed query {query!r}") from None
        for key, value in pairs:
            if key == "label":
                label = value
            elif key == "location":
                if not value.startswith("/"):
                    raise InvalidURIError(uri, f"location must be an absolute path, not {value!r}")
                location = value
            # Other parameters are ignored so URIs from newer versions still load.
    return Sha1URI(sha1=hash_part, label=label, location=location)


def parse_feed_uri(uri: str) -> str:
    """The feed id of ``kachery-feed://<feed id>``."""
    m = _SCHEME_RE.match(uri) if isinstance(uri, str) else None
    if not m:
        raise InvalidURIError(str(uri), "expected kachery-feed://<feed id>")
    if m.group(1) != "kachery-feed":
        raise UnknownURISchemeError(uri, m.group(1))
    feed_id = uri[len("kachery-feed://"):].split("?", 1)[0].rstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", feed_id):
        raise InvalidURIError(uri, f"{feed_id!r} is not a feed id")
    return feed_id
