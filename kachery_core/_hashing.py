"""sha1 of files (with a cache keyed by the file's identity on disk), strings and dicts.

The cache entry for a path records size, mtime, ctime and inode; any change to
one of them (which any write to the file causes) makes the entry stale and the
file is hashed again. Entries live where kachery-cloud keeps its own,
``mutables/@compute_sha1_cache/<sha1 of path>``, in a JSON superset of its format.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from . import _fs, _progress, _serializers
from .errors import SerializationError

CHUNK_SIZE = 4 * 1024 * 1024
_CACHE_MIN_SIZE = 1_000_000  # hashing less than this is faster than reading a cache entry


def sha1_of_bytes(data: bytes, label: str | None = None) -> str:
    """sha1 of ``data``; big content named by a ``label`` shows a progress bar while it is hashed."""
    if label is None or not _progress.shows(len(data)):
        return hashlib.sha1(data).hexdigest()
    h = hashlib.sha1()
    view = memoryview(data)
    with _progress.Progress(f"hashing {label}", len(data)) as progress:
        for start in range(0, len(view), CHUNK_SIZE):
            h.update(view[start:start + CHUNK_SIZE])  # hashlib releases the GIL for large buffers
            progress(min(start + CHUNK_SIZE, len(view)))
    return h.hexdigest()


def sha1_of_string(text: str) -> str:
    return sha1_of_bytes(text.encode("utf-8"))


def sha1_of_dict(obj: Any) -> str:
    """kachery-cloud's hash of a JSON value: sha1 of its JSON with sorted keys, separators ``(',', ':')``,
    and every float with an integral value written as an integer (``1.0`` -> ``1``, as JavaScript does).

    Written as kachery-cloud 0.4.10 writes it (simplejson): non-string keys become strings
    (``2`` -> ``"2"``, ``1.5`` -> ``"1.5"``, ``True`` -> ``"true"``, ``None`` -> ``"null"``)
    before the keys are sorted, so ``{10: ..., 2: ...}`` sorts as text; integral floats become
    exact integers (``1e20`` -> ``100000000000000000000``, ``-0.0`` -> ``0``); tuples are lists.
    NaN and infinities are refused, as is anything JSON cannot hold.
    """
    try:
        value = _kachery_cloud_json(obj)
    except RecursionError:
        raise SerializationError("cannot hash as JSON: nested too deeply (or it contains itself)") from None
    return sha1_of_string(_serializers.json_dumps_deterministic(value))


def _kachery_cloud_json(x: Any) -> Any:
    if isinstance(x, float):
        if not math.isfinite(x):
            raise SerializationError(f"cannot hash as JSON: {float(x)!r} (NaN and Infinity are not JSON)")
        return int(x) if x.is_integer() else x
    if isinstance(x, dict):
        out: dict[Any, Any] = {}
        for key, value in x.items():
            name = _key_text(key)
            if name in out:
                raise SerializationError(f"cannot hash as JSON: two keys are both written {name!r}")
            out[name] = _kachery_cloud_json(value)
        return out
    if isinstance(x, (list, tuple)):
        return [_kachery_cloud_json(v) for v in x]
    return x


def _key_text(key: Any) -> Any:
    """A dict key as JSON writes it; other keys are left for the JSON encoder to refuse."""
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        if not math.isfinite(key):
            raise SerializationError(f"cannot hash as JSON: a key {float(key)!r} (NaN and Infinity are not JSON)")
        return float.__repr__(float(key))
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return str(int(key))
    return key


def _cache_path(path: str) -> Path:
    return Path(
        _fs.get_kachery_cloud_dir(), "mutables", "@compute_sha1_cache", sha1_of_string(path)
    )


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def same_identity(a: os.stat_result, b: os.stat_result) -> bool:
    return _identity(a) == _identity(b)


def cached_sha1(path: str, st: os.stat_result) -> str | None:
    """The cached sha1 of ``path`` if the file is unchanged since it was recorded."""
    if st.st_size < _CACHE_MIN_SIZE:
        return None
    try:
        entry = json.loads(_cache_path(path).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("path") != path:
        return None
    # Entries written by kachery-cloud lack ctime/inode: they are not trusted.
    if any(entry.get(k) != v for k, v in _identity(st).items()):
        return None
    sha1 = entry.get("sha1")
    return sha1 if isinstance(sha1, str) else None


def record_sha1(path: str, st: os.stat_result, sha1: str) -> None:
    if st.st_size < _CACHE_MIN_SIZE:
        return
    entry = {"path": path, "sha1": sha1, "mtime": st.st_mtime, **_identity(st)}
    _fs.write_file_atomic(_cache_path(path), json.dumps(entry).encode())


def hash_open_file(fd: int, size: int, on_progress: Callable[[int], None] | None = None) -> str:
    """sha1 of an open file read from its start, in constant memory."""
    h = hashlib.sha1()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    done = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        n = os.readv(fd, [buf])
        if n == 0:
            break
        h.update(view[:n])  # hashlib releases the GIL for large buffers
        done += n
        if on_progress is not None:
            on_progress(done)
    return h.hexdigest()


def sha1_of_open_file(fd: int, path: str, *, use_cache: bool = True) -> str:
    """sha1 of the file open as ``fd`` (found at the absolute ``path``), using and filling the cache.

    The cache is keyed by the identity of the open file (``fstat``), so a file replaced at
    ``path`` since it was opened is not mistaken for the one that was hashed.
    """
    st = os.fstat(fd)
    if use_cache:
        cached = cached_sha1(path, st)
        if cached is not None:
            return cached
    with _progress.Progress(f"hashing {os.path.basename(path)}", st.st_size) as progress:
        sha1 = hash_open_file(fd, st.st_size, progress)
    if use_cache and same_identity(st, os.fstat(fd)):
        record_sha1(path, st, sha1)
    return sha1


def sha1_of_file(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """sha1 of the file at ``path``, using and filling the cache."""
    p = os.path.abspath(path)
    fd = os.open(p, os.O_RDONLY)
    try:
        return sha1_of_open_file(fd, p, use_cache=use_cache)
    finally:
        os.close(fd)
