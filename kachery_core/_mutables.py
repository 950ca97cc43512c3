"""Local mutables: a key → text store under ``$KACHERY_CLOUD_DIR/mutables``.

Key ``a/b/c`` lives in ``mutables/@a/@b/c``: folder segments get an ``@`` so a
key can be both a value (``a``) and a folder of others (``a/b``), as in
kachery-cloud.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import _constants, _fs
from .errors import InvalidMutableKeyError, MutableValueError

_MAX_KEY_LENGTH = 1000
_MAX_SEGMENT_BYTES = 200  # file systems allow 255 per name; keep room for temp suffixes
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidMutableKeyError(repr(key), f"expected a string, got {type(key).__name__}")
    if key == "":
        raise InvalidMutableKeyError(key, "the key is empty")
    if len(key) > _MAX_KEY_LENGTH:
        raise InvalidMutableKeyError(key[:40] + "…", f"longer than {_MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidMutableKeyError(key, "absolute paths are not keys; drop the leading '/'")
    if "\\" in key or _CONTROL.search(key):  # a hub refuses control characters in keys: so do we
        raise InvalidMutableKeyError(key, "backslashes and control characters (NUL, tab, newline...) are not allowed")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidMutableKeyError(key, "empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidMutableKeyError(key, f"{segment!r} segments are not allowed")
        if segment.startswith("@"):
            raise InvalidMutableKeyError(key, f"segment {segment!r} starts with '@', which is reserved")
        if len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
            raise InvalidMutableKeyError(key, f"a segment is longer than {_MAX_SEGMENT_BYTES} bytes")
    return key


def validate_value(key: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise MutableValueError(key, f"expected a string, got {type(value).__name__}")
    if "\x00" in value:  # refused locally too, so a value that works here also works on a hub
        raise MutableValueError(key, f"NUL characters are not allowed in a value (one at position {value.index(chr(0))})")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MutableValueError(key, f"not valid text: {e.reason} at position {e.start}") from None
    if len(data) > _constants.MAX_MUTABLE_VALUE_BYTES:
        raise MutableValueError(
            key, f"{len(data)} bytes is over the limit of {_constants.MAX_MUTABLE_VALUE_BYTES} bytes"
        )
    return data


def mutable_path(key: str) -> Path:
    segments = validate_key(key).split("/")
    folders = ["@" + s for s in segments[:-1]]
    return Path(_fs.get_kachery_cloud_dir(), "mutables", *folders, segments[-1])


def set_mutable_local(key: str, value: str) -> None:
    """Set local mutable ``key`` to the text ``value`` (atomically)."""
    data = validate_value(key, value)
    _fs.write_file_atomic(mutable_path(key), data)


def get_mutable_local(key: str, default_value: str | None = None) -> str | None:
    """The text of local mutable ``key``, or ``default_value`` when it is not set."""
    path = mutable_path(key)
    try:
        return path.read_bytes().decode("utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return default_value


def delete_mutable_local(key: str) -> bool:
    """Delete local mutable ``key``; returns whether it existed."""
    path = mutable_path(key)
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True
