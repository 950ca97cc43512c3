"""The local content-addressed store.

Files live at ``$KACHERY_CLOUD_DIR/sha1/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>``::

    sha1/
      .tmp/                 partial copies of files being stored (hash not yet known)
      .corrupt/             store files whose bytes no longer match their name
      .heads/ab/<key>       sha1 of the content last stored with this size, first and last MiB
      0b/ee/c7/0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33

Storing a file copies it in the kernel (``copy_file_range``) in a background
thread while the calling thread hashes it, so the data is read once and the copy
costs almost nothing on top of the hash. The copy is renamed into place only
when the hash is known, so no partial file is ever visible under a sha1 name.
A big file (8 MiB or more) is first looked up in ``.heads/`` by its size and
first and last MiB: when that names content the store holds, the file is only
hashed (copied afterwards if the hash differs), so storing content the store
already has, from a new path, costs no copy.
Loading never returns bytes that do not match their URI, even while another
process rewrites the file (a shared multi-user store, or the source of a
``reference=True`` URI):

- ``load_text/json/npy/pkl``, ``load_bytes`` of the whole content and
  ``cat_file`` of a file up to 64 MiB read the bytes once, hash exactly those
  bytes, and only then deserialize or return them;
- ``load_file(dest=...)`` copies, hashes the copy, and renames it into ``dest``
  only if it matches;
- ``load_file`` returns the path of a file it has verified (hash cached by
  size/mtime/ctime/inode): what a caller later reads there is the caller's;
- ``cat_file`` of a bigger file streams while hashing and raises
  :class:`HashMismatchError` at the end if the bytes did not match (what was
  already written cannot be taken back);
- ``load_bytes`` of a range reads it from the same open file it verified; see
  its docstring for what that does and does not guarantee.

Partial files in ``.tmp/`` belong to the process writing them (an exclusive
``flock``); the first store or download of a process, and one every ten minutes
after, removes those whose process is gone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from . import _fs, _hashing, _progress, _serializers
from ._uris import Sha1URI, format_sha1_uri, is_sha1, parse_sha1_uri
from .errors import ByteRangeError, FileChangedError, HashMismatchError, KacheryFileNotFoundError


def store_path(sha1: str) -> Path:
    return Path(_fs.get_kachery_cloud_dir(), "sha1", sha1[0:2], sha1[2:4], sha1[4:6], sha1)


#: Temp files of processes that died are looked for when a process first stores or downloads, then this often.
_TMP_CLEANUP_SECONDS = 600.0
_last_tmp_cleanup: dict[str, float] = {}


def _tmp_dir() -> Path:
    """The store's temp folder, cleared of what dead processes left (cheaply: not on every call)."""
    d = Path(_fs.get_kachery_cloud_dir(), "sha1", ".tmp")
    _fs.makedirs(d)
    now = time.monotonic()
    last = _last_tmp_cleanup.get(str(d))
    if last is None or now - last > _TMP_CLEANUP_SECONDS:
        _last_tmp_cleanup[str(d)] = now
        _fs.remove_unowned_tmp_files(d)
    return d


def _copy_range(src_fd: int, dst_fd: int, size: int, errors: list[BaseException]) -> None:
    try:
        offset = 0
        copy_file_range = getattr(os, "copy_file_range", None)  # Linux only
        try:
            if copy_file_range is None:
                raise OSError("no copy_file_range")
            while offset < size:
                n = copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
                if n == 0:
                    break
                offset += n
        except OSError:
            # No in-kernel copy here (another file system, old kernel, not Linux): plain copy of the rest.
            os.lseek(src_fd, offset, os.SEEK_SET)
            os.lseek(dst_fd, offset, os.SEEK_SET)
            with open(src_fd, "rb", closefd=False) as src, open(dst_fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst, _hashing.CHUNK_SIZE)
    except BaseException as e:  # re-raised by the waiting thread
        errors.append(e)


#: Files this big are looked up by their size, first and last MiB (``sha1/.heads/``) before they
#: are copied: content the store already holds is then only hashed, never copied.
_HEAD_MIN_SIZE = 8 * 1024 * 1024
_HEAD_BYTES = 1024 * 1024


def _head_key(fd: int, size: int) -> str:
    h = hashlib.sha1(b"%d\n" % size)
    h.update(os.pread(fd, _HEAD_BYTES, 0))
    h.update(os.pread(fd, _HEAD_BYTES, size - _HEAD_BYTES))
    return h.hexdigest()


def _head_path(key: str) -> Path:
    return Path(_fs.get_kachery_cloud_dir(), "sha1", ".heads", key[0:2], key)


def _held_with_head(key: str, size: int) -> str | None:
    """The sha1 of a store file of ``size`` bytes recorded with this head key, if the store holds it."""
    try:
        sha1 = _head_path(key).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    if len(sha1) != 40 or not is_sha1(sha1):
        return None
    try:
        return sha1 if os.stat(store_path(sha1)).st_size == size else None
    except FileNotFoundError:
        return None


def _store_copy(path: str) -> str:
    """Put the file at ``path`` into the store; returns its sha1.

    New content is copied (in the kernel, in a second thread) while this thread
    hashes it: one pass. A big file whose size, first and last MiB match content
    the store holds is likely that content: it is hashed without copying, and
    copied afterwards only if its hash turns out different.
    """
    src_fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(src_fd)
        key = _head_key(src_fd, st.st_size) if st.st_size >= _HEAD_MIN_SIZE else None
        sha1: str | None = None
        held = _held_with_head(key, st.st_size) if key is not None else None
        if held is not None:
            with _progress.Progress(f"hashing {os.path.basename(path)}", st.st_size) as progress:
                sha1 = _hashing.hash_open_file(src_fd, st.st_size, progress)
            if not _hashing.same_identity(st, os.fstat(src_fd)):
                raise FileChangedError(path)
        if sha1 is None or sha1 != held or not store_path(sha1).exists():
            with _progress.Progress(f"storing {os.path.basename(path)}", st.st_size) as progress:
                sha1 = _copy_in(path, src_fd, st, sha1, progress)
            if key is not None and held != sha1:
                _fs.write_file_atomic(_head_path(key), sha1.encode("ascii"))
        _hashing.record_sha1(path, st, sha1)
        return sha1
    finally:
        os.close(src_fd)


def _copy_in(path: str, src_fd: int, st: os.stat_result, sha1: str | None, progress: _progress.Progress) -> str:
    """Copy the file open as ``src_fd`` into the store, hashing it meanwhile unless its ``sha1`` is known."""
    copy_src_fd = os.open(path, os.O_RDONLY)  # its own file offset, for a copy without copy_file_range
    try:
        tmp, owner = _fs.open_owned_tmp(_tmp_dir())
    except BaseException:
        os.close(copy_src_fd)
        raise
    dst_fd = owner.fileno()
    try:
        if (os.fstat(copy_src_fd).st_ino, os.fstat(copy_src_fd).st_dev) != (st.st_ino, st.st_dev):
            raise FileChangedError(path)  # replaced between the two opens
        errors: list[BaseException] = []
        if sha1 is None:
            copier = threading.Thread(target=_copy_range, args=(copy_src_fd, dst_fd, st.st_size, errors), daemon=True)
            copier.start()
            sha1 = _hashing.hash_open_file(src_fd, st.st_size, progress)
            copier.join()
        else:
            _copy_range(copy_src_fd, dst_fd, st.st_size, errors)
            if not errors:
                progress(st.st_size)
        if errors:
            raise errors[0]
        if not _hashing.same_identity(st, os.fstat(src_fd)) or os.fstat(dst_fd).st_size != st.st_size:
            raise FileChangedError(path)
        final = store_path(sha1)
        if final.exists():
            tmp.unlink()
        else:
            _fs.makedirs(final.parent)
            _fs.finish_file(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(copy_src_fd)
        owner.close()  # after the rename: the lock keeps a cleaner away until then
    _hashing.record_sha1(str(final), os.stat(final), sha1)
    return sha1


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
        sha1 = _store_copy(path)
    return format_sha1_uri(sha1, label=label)


def store_bytes_local(data: bytes, *, label: str | None = None) -> str:
    sha1 = _hashing.sha1_of_bytes(data, label or "content")  # big content shows a bar
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


def _quarantine(path: Path, st: os.stat_result) -> None:
    """Move the store file ``path`` aside, if it is still the file ``st`` describes."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        return  # replaced since it was read: not the file found corrupt
    d = Path(_fs.get_kachery_cloud_dir(), "sha1", ".corrupt")
    _fs.makedirs(d)
    try:
        os.replace(path, d / f"{path.name}.{os.urandom(4).hex()}")
    except FileNotFoundError:
        pass


def _mismatch(path: Path, st: os.stat_result, uri: str, sha1: str, actual: str, *, in_store: bool) -> HashMismatchError:
    if in_store:
        _quarantine(path, st)
    return HashMismatchError(uri, sha1, actual, str(path))


def _verified(path: Path, uri: str, sha1: str, *, in_store: bool) -> bool:
    """Whether ``path`` holds the content ``sha1``; a corrupt store file is moved aside."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        actual = _hashing.sha1_of_open_file(fd, os.path.abspath(path))
        if actual == sha1:
            return True
        raise _mismatch(path, os.fstat(fd), uri, sha1, actual, in_store=in_store)
    finally:
        os.close(fd)


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


def _use_hub(local_only: bool) -> bool:
    """Whether content missing here may be fetched from a hub."""
    from . import _remote  # imported only when needed: the hub client is optional

    return not local_only and _remote.hub_configured()


_T = TypeVar("_T")


def _load_verified(uri: str, local_only: bool, read: Callable[[Path, Sha1URI, str, bool], _T | None]) -> _T:
    """``read`` applied to the store file, else the referenced ``location``, else a fresh
    download into the store. ``read`` verifies what it returns; a file that does not match
    (moved aside when it is the store's) is passed over for the next source."""
    parsed = parse_sha1_uri(uri)
    mismatch: HashMismatchError | None = None
    sources = [(store_path(parsed.sha1), True)]
    if parsed.location:
        sources.append((Path(parsed.location), False))
    for path, in_store in sources:
        try:
            result = read(path, parsed, uri, in_store)
        except HashMismatchError as e:
            mismatch = mismatch or e
            continue
        if result is not None:
            return result
    if _use_hub(local_only):
        from . import _remote

        result = read(_remote.download(parsed, uri), parsed, uri, True)  # hashed as it arrived (the cache knows)
        if result is not None:
            return result
    if mismatch is not None:
        raise mismatch
    where = f"not in the local store {store_path(parsed.sha1)}"
    if parsed.location:
        where += f" nor at {parsed.location}"
    raise KacheryFileNotFoundError(uri, where)


def _read_path(path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> Path | None:
    return path if path.is_file() and _verified(path, uri, parsed.sha1, in_store=in_store) else None


def _read_bytes(path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> bytes | None:
    """The whole file, read once; the bytes read are the bytes hashed."""
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        return None
    with f:
        return _read_whole_verified(f, path, parsed, uri, in_store)


def _read_whole_verified(f: BinaryIO, path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> bytes:
    """The rest of open file ``f``, checked against the URI's hash: the bytes read are the bytes hashed."""
    st = os.fstat(f.fileno())
    data = f.read()
    actual = hashlib.sha1(data).hexdigest()
    if actual != parsed.sha1:
        raise _mismatch(path, st, uri, parsed.sha1, actual, in_store=in_store)
    return data


def _copy_to(dest: Path) -> Callable[[Path, Sha1URI, str, bool], str | None]:
    """A reader that copies the file beside ``dest``, hashes the copy, and renames it into ``dest``
    only if it matches: ``dest`` never holds other bytes, even for a moment."""

    def copy(path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> str | None:
        try:
            src_fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            return None
        tmp = _fs.tmp_path_beside(dest)
        try:
            st = os.fstat(src_fd)
            dst_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                errors: list[BaseException] = []
                _copy_range(src_fd, dst_fd, st.st_size, errors)  # in the kernel where it can
                if errors:
                    raise errors[0]
                actual = _hashing.hash_open_file(dst_fd, st.st_size)  # the copy's bytes, not the source's
            finally:
                os.close(dst_fd)
            if actual != parsed.sha1:
                raise _mismatch(path, st, uri, parsed.sha1, actual, in_store=in_store)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(src_fd)
        return str(dest)

    return copy


def load_file(uri: str, *, local_only: bool = False, dest: str | None = None) -> str:
    """Path of a local file holding the content of ``uri`` (copied to ``dest`` if given).

    The content is checked against the hash in the URI: without ``dest``, the file at the
    returned path was verified (later changes to it are not); with ``dest``, the copy
    itself was verified before it was renamed into ``dest``. Raises
    :class:`KacheryFileNotFoundError` when it is not available.
    """
    if dest is None:
        return str(_load_verified(uri, local_only, _read_path))
    dest_path = Path(dest).absolute()
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    return _load_verified(uri, local_only, _copy_to(dest_path))


def load_bytes(uri: str, start: int | None = None, end: int | None = None, *, local_only: bool = False) -> bytes:
    """Bytes ``[start, end)`` of the content of ``uri``.

    The whole content (no ``start``/``end``) is read once and those very bytes are checked
    against the URI's hash (downloaded into the local store first if needed).

    A range cannot be checked against the hash of the whole file without reading the whole
    file. Locally, the range is read from the same open file whose hash was checked (hash
    cached by size/mtime/ctime/inode) and the file must still have that identity after the
    read: a file replaced or rewritten meanwhile is refused. Not guaranteed: an in-place
    change that leaves size, mtime, ctime and inode as they were (within the file system's
    timestamp granularity). From a hub (content not in the local store) the range is an HTTP
    range request and is not verified at all. Read the whole content when it must be verified.
    """
    if start in (None, 0) and end is None:
        return _load_verified(uri, local_only, _read_bytes)
    try:
        # one hash of each local source (or none, when the cache vouches for it), then the range
        return _load_verified(uri, True, _read_range(start, end))
    except KacheryFileNotFoundError:
        if not _use_hub(local_only):
            raise
    from . import _remote

    return _remote.load_bytes(uri, start, end)  # an HTTP range request, not the whole file


def _read_range(start: int | None, end: int | None) -> Callable[[Path, Sha1URI, str, bool], bytes | None]:
    def read(path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            actual = _hashing.sha1_of_open_file(fd, os.path.abspath(path))
            if actual != parsed.sha1:
                raise _mismatch(path, st, uri, parsed.sha1, actual, in_store=in_store)
            lo = 0 if start is None else start
            hi = st.st_size if end is None else end
            if not (0 <= lo <= hi <= st.st_size):
                raise ByteRangeError(uri, start, end, st.st_size)
            data = os.pread(fd, hi - lo, lo)
            if len(data) != hi - lo or not _hashing.same_identity(st, os.fstat(fd)):
                raise HashMismatchError(uri, parsed.sha1, "(changed while it was read)", str(path))
            return data
        finally:
            os.close(fd)

    return read


def load_text(uri: str, *, local_only: bool = False) -> str:
    return _serializers.bytes_to_text(_read(uri, local_only))


def load_json(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_json(_read(uri, local_only))


def load_npy(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_npy(_read(uri, local_only))


def load_pkl(uri: str, *, local_only: bool = False) -> Any:
    return _serializers.bytes_to_pkl(_read(uri, local_only))


def _read(uri: str, local_only: bool) -> bytes:
    return _load_verified(uri, local_only, _read_bytes)


#: cat_file checks files up to this size before it writes a byte; bigger ones as they stream.
_CAT_VERIFY_FIRST_BYTES = 64 * 1024 * 1024


def cat_file(uri: str, *, local_only: bool = False, out: BinaryIO | None = None) -> None:
    """Write the content of ``uri`` to ``out`` (standard output by default).

    Up to 64 MiB, the content is read and checked before anything is written. A bigger
    file is read once and hashed as it streams, in constant memory; if it turns out not
    to match (corrupt, or changed while it was read), :class:`HashMismatchError` is raised
    at the end, and what was already written cannot be taken back.
    """
    stream = out if out is not None else sys.stdout.buffer
    try:
        _load_verified(uri, local_only, _cat_to(stream))  # one read and one hash pass of the file
    except _WrittenMismatch as e:
        raise e.mismatch from None
    stream.flush()


class _WrittenMismatch(Exception):
    """A mismatch found after bytes were written: no other source may be tried after it."""

    def __init__(self, mismatch: HashMismatchError) -> None:
        self.mismatch = mismatch


def _cat_to(stream: BinaryIO) -> Callable[[Path, Sha1URI, str, bool], bool | None]:
    def cat(path: Path, parsed: Sha1URI, uri: str, in_store: bool) -> bool | None:
        try:
            f = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError):
            return None
        with f:
            st = os.fstat(f.fileno())
            if st.st_size <= _CAT_VERIFY_FIRST_BYTES:
                stream.write(_read_whole_verified(f, path, parsed, uri, in_store))
                return True
            cached = _hashing.cached_sha1(os.path.abspath(path), st)
            if cached is not None and cached != parsed.sha1:
                raise _mismatch(path, st, uri, parsed.sha1, cached, in_store=in_store)  # before writing anything
            h = hashlib.sha1()
            while chunk := f.read(_hashing.CHUNK_SIZE):
                h.update(chunk)
                stream.write(chunk)
            if h.hexdigest() != parsed.sha1:
                stream.flush()
                raise _WrittenMismatch(_mismatch(path, st, uri, parsed.sha1, h.hexdigest(), in_store=in_store))
            if cached is None and _hashing.same_identity(st, os.fstat(f.fileno())):
                _hashing.record_sha1(os.path.abspath(path), st, parsed.sha1)
        return True

    return cat


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


def sha1_of_dict(obj: dict[Any, Any]) -> str:
    """kachery-cloud's sha1 of ``obj`` as JSON (integral floats written as integers: see :mod:`._hashing`)."""
    return _hashing.sha1_of_dict(obj)
