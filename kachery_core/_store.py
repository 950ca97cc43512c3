"""The local content-addressed store.

Files live at ``$KACHERY_CLOUD_DIR/sha1/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>``::

    sha1/
      .tmp/                 partial copies of files being stored (hash not yet known)
      .corrupt/             store files whose bytes no longer match their name
      0b/ee/c7/0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33

Storing a file copies it in the kernel (``copy_file_range``) in a background
thread while the calling thread hashes it, so the data is read once and the copy
costs almost nothing on top of the hash. The copy is renamed into place only
when the hash is known, so no partial file is ever visible under a sha1 name.
Loading checks the hash (cached by size/mtime/ctime/inode) and never returns
bytes that do not match their URI.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from . import _fs, _hashing, _serializers
from ._uris import Sha1URI, format_sha1_uri, parse_sha1_uri
from .errors import ByteRangeError, FileChangedError, HashMismatchError, KacheryFileNotFoundError


def store_path(sha1: str) -> Path:
    return Path(_fs.get_kachery_cloud_dir(), "sha1", sha1[0:2], sha1[2:4], sha1[4:6], sha1)


def _tmp_dir() -> Path:
    d = Path(_fs.get_kachery_cloud_dir(), "sha1", ".tmp")
    _fs.makedirs(d)
    return d


def _copy_range(src_fd: int, dst_fd: int, size: int, errors: list[BaseException]) -> None:
    try:
        offset = 0
        try:
            while offset < size:
                n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
                if n == 0:
                    break
                offset += n
        except OSError:
            # No in-kernel copy here (another file system, old kernel): plain copy of the rest.
            os.lseek(src_fd, offset, os.SEEK_SET)
            os.lseek(dst_fd, offset, os.SEEK_SET)
            with open(src_fd, "rb", closefd=False) as src, open(dst_fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst, _hashing.CHUNK_SIZE)
    except BaseException as e:  # re-raised by the waiting thread
        errors.append(e)


def _store_copy(path: str) -> str:
    """Copy ``path`` into the store while hashing it; returns its sha1."""
    src_fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(src_fd)
        tmp = _tmp_dir() / f"{os.getpid()}-{threading.get_ident()}-{os.urandom(6).hex()}.tmp"
        copy_src_fd = os.open(path, os.O_RDONLY)
        dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            errors: list[BaseException] = []
            copier = threading.Thread(
                target=_copy_range, args=(copy_src_fd, dst_fd, st.st_size, errors), daemon=True
            )
            copier.start()
            progress = _hashing.Progress(f"storing {os.path.basename(path)}", st.st_size)
            sha1 = _hashing.hash_open_file(src_fd, st.st_size, progress)
            copier.join()
            if errors:
                raise errors[0]
            if not _hashing.same_identity(st, os.fstat(src_fd)) or os.fstat(dst_fd).st_size != st.st_size:
                raise FileChangedError(path)
        except BaseException:
            os.close(dst_fd)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(copy_src_fd)
        os.close(dst_fd)
        final = store_path(sha1)
        try:
            if final.exists():
                tmp.unlink()
            else:
                _fs.makedirs(final.parent)
                _fs.finish_file(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _hashing.record_sha1(path, st, sha1)
        _hashing.record_sha1(str(final), os.stat(final), sha1)
        return sha1
    finally:
        os.close(src_fd)


def store_file_local(
    filename: str | os.PathLike[str], *, label: str | None = None, reference: bool = False
) -> str:
    """Store a file in the local store and return its ``sha1://`` URI.

    With ``reference=True`` nothing is copied: the URI carries the file's
    absolute ``location`` and loading checks that the file still has that hash.
    """
    name = os.fspath(filename)
    if name.startswith("sha1://"):
        name = load_file(name)
    path = os.path.abspath(name)
    if not os.path.exists(path):
        raise KacheryFileNotFoundError(path, "no such file to store")
    if not os.path.isfile(path):
        raise KacheryFileNotFoundError(path, "not a regular file")
    if reference:
        sha1 = _hashing.sha1_of_file(path)
        return format_sha1_uri(sha1, label=label, location=path)
    cached = _hashing.cached_sha1(path, os.stat(path))
    if cached is not None and store_path(cached).exists():
        sha1 = cached
    else:
        _fs.remove_stale_tmp_files(_tmp_dir())
        sha1 = _store_copy(path)
    return format_sha1_uri(sha1, label=label)


def store_bytes_local(data: bytes, *, label: str | None = None) -> str:
    sha1 = _hashing.sha1_of_bytes(data)
    final = store_path(sha1)
    if not final.exists():
        _fs.write_file_atomic(final, data)
    return format_sha1_uri(sha1, label=label)


def store_text_local(text: str, *, label: str | None = None) -> str:
    return store_bytes_local(_serializers.text_to_bytes(text), label=label)


def store_json_local(obj: Any, *, label: str | None = None) -> str:
    return store_bytes_local(_serializers.json_to_bytes(obj), label=label)


def store_npy_local(array: Any, *, label: str | None = None) -> str:
    return store_bytes_local(_serializers.npy_to_bytes(array), label=label)


def store_pkl_local(obj: Any, *, label: str | None = None) -> str:
    return store_bytes_local(_serializers.pkl_to_bytes(obj), label=label)


def _quarantine(path: Path) -> None:
    d = Path(_fs.get_kachery_cloud_dir(), "sha1", ".corrupt")
    _fs.makedirs(d)
    try:
        os.replace(path, d / f"{path.name}.{os.urandom(4).hex()}")
    except FileNotFoundError:
        pass


def _verified(path: Path, uri: str, sha1: str, *, in_store: bool) -> bool:
    """Whether ``path`` holds the content ``sha1``; a corrupt store file is moved aside."""
    try:
        actual = _hashing.sha1_of_file(path)
    except FileNotFoundError:
        return False
    if actual == sha1:
        return True
    if in_store:
        _quarantine(path)
    raise HashMismatchError(uri, sha1, actual, str(path))


def find_local(uri: str) -> tuple[Sha1URI, Path | None]:
    """The parsed URI and a verified local path holding its content, if any."""
    parsed = parse_sha1_uri(uri)
    candidate = store_path(parsed.sha1)
    if candidate.exists() and _verified(candidate, uri, parsed.sha1, in_store=True):
        return parsed, candidate
    if parsed.location and os.path.isfile(parsed.location):
        location = Path(parsed.location)
        if _verified(location, uri, parsed.sha1, in_store=False):
            return parsed, location
    return parsed, None


def _copy_to_dest(src: Path, dest: str) -> str:
    dest_path = Path(dest).absolute()
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fs.tmp_path_beside(dest_path)
    try:
        shutil.copyfile(src, tmp)  # uses in-kernel copy on Linux
        os.replace(tmp, dest_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(dest_path)


def _use_hub(local_only: bool) -> bool:
    """Whether content missing here may be fetched from a hub."""
    from . import _remote  # imported only when needed: the hub client is optional

    return not local_only and _remote.hub_configured()


def load_file(uri: str, *, local_only: bool = False, dest: str | None = None) -> str:
    """Path of a local file holding the content of ``uri`` (copied to ``dest`` if given).

    The content is checked against the hash in the URI. Raises
    :class:`KacheryFileNotFoundError` when it is not available.
    """
    try:
        parsed, path = find_local(uri)
    except HashMismatchError:
        if not _use_hub(local_only):
            raise
        parsed, path = parse_sha1_uri(uri), None  # the corrupt copy was moved aside: fetch a good one
    if path is None and _use_hub(local_only):
        from . import _remote

        path = _remote.download(parsed, uri)  # verified, and kept in the local store
    if path is None:
        where = f"not in the local store {store_path(parsed.sha1)}"
        if parsed.location:
            where += f" nor at {parsed.location}"
        raise KacheryFileNotFoundError(uri, where)
    return _copy_to_dest(path, dest) if dest is not None else str(path)


def load_bytes(uri: str, start: int | None = None, end: int | None = None, *, local_only: bool = False) -> bytes:
    """Bytes ``[start, end)`` of the content of ``uri``."""
    if _use_hub(local_only) and find_local(uri)[1] is None:
        from . import _remote

        return _remote.load_bytes(uri, start, end)  # an HTTP range request, not the whole file
    path = Path(load_file(uri, local_only=local_only))
    size = path.stat().st_size
    lo = 0 if start is None else start
    hi = size if end is None else end
    if not (0 <= lo <= hi <= size):
        raise ByteRangeError(uri, start, end, size)
    with open(path, "rb") as f:
        f.seek(lo)
        return f.read(hi - lo)


def load_text(uri: str, *, local_only: bool = False) -> str:
    return _serializers.bytes_to_text(_read(uri, local_only))


def load_json(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_json(_read(uri, local_only))


def load_npy(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_npy(_read(uri, local_only))


def load_pkl(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_pkl(_read(uri, local_only))


def _read(uri: str, local_only: bool) -> bytes:
    return Path(load_file(uri, local_only=local_only)).read_bytes()


def cat_file(uri: str, *, local_only: bool = False, out: BinaryIO | None = None) -> None:
    """Write the content of ``uri`` to ``out`` (standard output by default)."""
    stream = out if out is not None else sys.stdout.buffer
    with open(load_file(uri, local_only=local_only), "rb") as f:
        shutil.copyfileobj(f, stream, _hashing.CHUNK_SIZE)
    stream.flush()


def load_file_info(uri: str, *, local_only: bool = False) -> dict[str, Any]:
    """What is known of ``uri`` locally: sha1, label, size and the local path."""
    parsed = parse_sha1_uri(uri)
    if _use_hub(local_only) and find_local(uri)[1] is None:
        from . import _remote

        return _remote.file_info(uri)  # what the hub knows, without downloading
    path = Path(load_file(uri, local_only=local_only))
    return {
        "uri": uri,
        "sha1": parsed.sha1,
        "label": parsed.label,
        "size": path.stat().st_size,
        "local_path": str(path),
    }


def sha1_of_dict(obj: dict[str, Any]) -> str:
    """sha1 of the deterministic JSON of ``obj`` (same as kachery-cloud's)."""
    return _hashing.sha1_of_string(_serializers.json_dumps_deterministic(obj))
