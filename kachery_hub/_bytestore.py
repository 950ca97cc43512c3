"""Where the hub keeps file bytes, behind a small interface.

``open_byte_store(url)`` picks the implementation from the storage URL. The
embedded default is :class:`LocalFolderStore` (``file://``)::

    <root>/
      .tmp/                    uploads in progress, and blobs being removed (:mod:`._gc`); never
                               visible under a sha1 name
      sha1/ab/cd/ef/abcdef…    verified blobs, named by their sha1

An upload goes to a temp file while its sha1 is computed chunk by chunk
(constant memory); it is renamed into place only when the hash matches, so a
hub killed mid-upload leaves nothing visible. The uploading process holds a
lock on its temp file (``kachery_core._fs.open_owned_tmp``); a temp file whose
lock can be taken belongs to a process that is gone, and is removed when the
hub starts and when an upload begins (at most every few minutes). An object store (S3) fits the
same interface (:mod:`._s3store`): ``upload_target``/``download_url`` then
return presigned URLs and clients transfer bytes directly; the local store
returns None, meaning "through the hub".
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from kachery_core._fs import open_owned_tmp, remove_unowned_tmp_files

from .errors import ConfigurationError, HashMismatch, PayloadTooLarge

_SHA1 = re.compile(r"[0-9a-f]{40}")
#: Uploads left by processes that are gone are looked for at most this often (and on start).
_TMP_CLEANUP_SECONDS = 300.0


class IncomingBlob(Protocol):
    """An upload in progress: feed it chunks, then ``finish`` or ``abort``."""

    def write(self, chunk: bytes) -> None: ...

    def finish(self, expected_sha1: str) -> int:
        """Verify and make the blob visible; returns its size. Raises HashMismatch."""
        ...

    def abort(self) -> None: ...

    def release(self) -> None:
        """Drop what ``finish`` kept (bytes the store held already); call it after the answer is sent."""
        ...


@dataclass(frozen=True)
class UploadTarget:
    """Where a client sends a blob's bytes itself (a presigned URL), and the headers to send."""

    url: str
    headers: dict[str, str]
    method: str = "PUT"
    #: Names this upload alone; the client presents it to complete the upload.
    upload_id: str | None = None


@dataclass(frozen=True)
class StoredObject:
    """One object a store holds, as garbage collection (:mod:`._gc`) sees it."""

    key: str  #: relative to the store, as ``files.storage_key`` names objects
    sha1: str
    upload_id: str | None  #: None: the blob's own path (``sha1/ab/cd/ef/<sha1>``)
    size: int
    modified: float  #: seconds since the epoch


class ByteStore(Protocol):
    #: True when clients transfer bytes directly with the store (presigned URLs).
    direct: bool

    def staged_size(self, sha1: str, upload_id: str) -> int | None:
        """The size of direct upload ``upload_id`` if it holds content with that very sha1, else None.

        Only bytes the client itself sent count: a blob the store already holds
        for another project proves nothing about the caller.
        """
        ...

    def adopt(self, sha1: str, upload_id: str) -> str:
        """The storage key of a proved direct upload, to record as its project's copy of ``sha1``."""
        ...

    def discard(self, sha1: str, upload_id: str) -> None:
        """Drop a direct upload: one its project does not need, or one never completed (if it arrived)."""
        ...

    def begin_upload(self, max_size: int | None = None) -> IncomingBlob:
        """An upload through the hub (stores that are not ``direct``)."""
        ...

    def local_path(self, sha1: str) -> Path | None:
        """A path the hub can serve directly, or None when the store is remote."""
        ...

    def upload_target(self, sha1: str) -> UploadTarget | None: ...

    def download_url(self, sha1: str, storage_key: str | None) -> str | None: ...

    def remove(self, storage_key: str) -> None: ...

    def cleanup(self) -> int: ...

    def objects(self) -> Iterator[StoredObject]:
        """Every blob and upload the store holds (not temp files), in no particular order."""
        ...

    def close(self) -> None: ...


class _LocalIncoming:
    def __init__(self, store: LocalFolderStore, max_size: int | None) -> None:
        self._store = store
        self._tmp, self._file = open_owned_tmp(store.tmp_dir)  # owned while open: see cleanup
        self._hash = hashlib.sha1()
        self._size = 0
        self._max_size = max_size
        self._redundant = False
        self._expected = ""

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._max_size is not None and self._size > self._max_size:
            raise PayloadTooLarge(f"upload is larger than the {self._max_size} bytes announced")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self, expected_sha1: str) -> int:
        try:
            actual = self._hash.hexdigest()
            if actual != expected_sha1:
                raise HashMismatch(
                    f"uploaded bytes have sha1 {actual}, not {expected_sha1}; nothing was stored",
                    expected=expected_sha1, actual=actual,
                )
            self._file.flush()
            os.fsync(self._file.fileno())  # the database will say the blob exists: make it so
            final = self._store.blob_path(expected_sha1)
            if final.exists():
                # The store held these bytes already. Freeing a big file's blocks takes time (about
                # a second a GiB): that is done by release(), after the answer, so that the answer
                # comes as soon whether or not another project holds the bytes.
                self._redundant = True
                self._expected = expected_sha1
                return self._size
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, final)
            self._file.close()  # only now: the lock keeps a cleanup from taking the file before the rename
            return self._size
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._file.closed:
            self._tmp.unlink(missing_ok=True)
            self._file.close()

    def release(self) -> None:
        if not self._redundant:
            return
        # Called once the file is recorded. The blob this upload found in place may have been
        # collected as garbage since (_gc holds its row's lock while moving it away, and a recorded
        # blob is never collected): then these bytes take its place.
        final = self._store.blob_path(self._expected)
        if not final.exists() and not self._file.closed:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, final)
            self._file.close()
            return
        self.abort()


class LocalFolderStore:
    direct = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._last_cleanup = 0.0

    def blob_path(self, sha1: str) -> Path:
        return self.root / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1

    def begin_upload(self, max_size: int | None = None) -> IncomingBlob:
        if time.monotonic() - self._last_cleanup > _TMP_CLEANUP_SECONDS:
            self.cleanup()
        return _LocalIncoming(self, max_size)

    def staged_size(self, sha1: str, upload_id: str) -> int | None:
        return None  # every upload comes through the hub (PUT) and is verified as it streams

    def adopt(self, sha1: str, upload_id: str) -> str:
        raise AssertionError("a folder store has no direct uploads")

    def discard(self, sha1: str, upload_id: str) -> None:
        pass

    def remove(self, storage_key: str) -> None:
        raise AssertionError("a folder store has no direct uploads")

    def local_path(self, sha1: str) -> Path | None:
        return self.blob_path(sha1)

    def upload_target(self, sha1: str) -> UploadTarget | None:
        return None

    def download_url(self, sha1: str, storage_key: str | None) -> str | None:
        return None

    def close(self) -> None:
        pass

    def cleanup(self) -> int:
        """Remove uploads whose process is gone (a hub killed mid-upload), whatever their age; returns how many."""
        self._last_cleanup = time.monotonic()
        return remove_unowned_tmp_files(self.tmp_dir)

    def objects(self) -> Iterator[StoredObject]:
        for folder, _, names in os.walk(self.root / "sha1"):
            for name in names:
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue  # removed meanwhile
                if _SHA1.fullmatch(name) and self.blob_path(name) == Path(folder, name):
                    yield StoredObject(f"sha1/{name[0:2]}/{name[2:4]}/{name[4:6]}/{name}", name, None,
                                       st.st_size, st.st_mtime)


def open_byte_store(url: str) -> ByteStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigurationError(f"storage URL {url!r}: file URLs must name a local path (file:///...)")
        return LocalFolderStore(Path(unquote(parsed.path)))
    if parsed.scheme == "" and url.startswith("/"):
        return LocalFolderStore(Path(url))
    if parsed.scheme == "s3":
        from ._s3store import S3ByteStore

        return S3ByteStore.from_url(url)
    raise ConfigurationError(
        f"storage URL {url!r}: unsupported scheme {parsed.scheme!r} "
        "(expected file:///<folder> or s3://<bucket>[/<prefix>]?endpoint_url=...)"
    )
