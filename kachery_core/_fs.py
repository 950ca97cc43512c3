"""The kachery directory and the file-system primitives every module shares.

Layout of ``$KACHERY_CLOUD_DIR`` (default ``~/.kachery-cloud``)::

    config.yaml            multiuser: true|false
    private.pem            Ed25519 private key (PKCS#8 PEM, mode 0600)
    public.pem             Ed25519 public key (SubjectPublicKeyInfo PEM)
    sha1/ab/cd/ef/abcdef…  stored files, named by their sha1
    sha1/.tmp/             partial writes; never visible under a sha1 name
    mutables/@a/@b/c       local mutable "a/b/c"
    mutables/@compute_sha1_cache/<sha1 of path>   hash cache (shared with kachery-cloud)

Every write goes to a temporary file on the same file system, then is renamed
into place, so readers see a whole file or none.

Temp files in a shared temp folder (``sha1/.tmp/``) are *owned*: the process
writing one holds an exclusive ``flock`` on it (:func:`open_owned_tmp`), which the
kernel drops when the process ends, however it ends. :func:`remove_unowned_tmp_files`
removes every temp file whose lock it can take, at once, whatever its age, and
leaves those of live processes alone. Where ``flock`` does not exist (Windows),
temp files are removed by age instead.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files are removed by age
    fcntl = None  # type: ignore[assignment]

from . import _constants
from .errors import ConfigError

_DIR_MODE_MULTIUSER = 0o777
_FILE_MODE_MULTIUSER = 0o666
_STALE_TMP_SECONDS = 24 * 3600


def get_kachery_cloud_dir() -> str:
    """The kachery directory, created if missing."""
    d = _constants.kachery_cloud_dir()
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def _config_path() -> Path:
    return Path(get_kachery_cloud_dir()) / "config.yaml"


def read_config() -> dict[str, object]:
    path = _config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    import yaml  # only when there is a config to read: it costs ~20 ms

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "expected a mapping at top level")
    return data


def is_multiuser() -> bool:
    value = read_config().get("multiuser", False)
    if not isinstance(value, bool):
        raise ConfigError(str(_config_path()), f"multiuser must be true or false, not {value!r}")
    return value


def makedirs(path: Path) -> None:
    """Create ``path`` and its parents; group/world writable in multiuser mode."""
    if path.is_dir():
        return
    if not is_multiuser():
        path.mkdir(parents=True, exist_ok=True)
        return
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue
        os.chmod(p, _DIR_MODE_MULTIUSER)  # umask would otherwise narrow the mode


def tmp_path_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.urandom(6).hex()}.tmp")


def finish_file(tmp: Path, final: Path, *, fsync: bool = False) -> None:
    """Make ``tmp`` visible as ``final`` atomically (rename on the same file system)."""
    if is_multiuser():
        os.chmod(tmp, _FILE_MODE_MULTIUSER)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, final)


def write_file_atomic(final: Path, data: bytes) -> None:
    makedirs(final.parent)
    tmp = tmp_path_beside(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        finish_file(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _still_linked(path: str | Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)


def open_owned_tmp(folder: Path, suffix: str = ".tmp") -> tuple[Path, io.BufferedRandom]:
    """A new, empty temp file in ``folder`` that this process owns while the returned file is open.

    Ownership is an exclusive ``flock`` held by that open file; the kernel releases it when
    the file is closed or the process ends (even by SIGKILL). Other open files of the same
    path (e.g. ``open(path, "wb")`` to write it) do not disturb it. Rename or delete the file,
    then close the returned file. ``suffix`` should end with ``.tmp``, which is what
    :func:`remove_unowned_tmp_files` looks for.
    """
    while True:
        path = folder / f"{os.getpid()}-{os.urandom(6).hex()}{suffix}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        f = os.fdopen(fd, "r+b")
        if fcntl is None:
            return path, f
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A cleaner locked it between our create and our lock: it is about to remove it.
            f.close()
            continue
        if _still_linked(path, fd):
            return path, f
        f.close()  # a cleaner removed it before we locked it: take another name


def remove_unowned_tmp_files(folder: Path, suffix: str = ".tmp") -> int:
    """Delete the temp files in ``folder`` that no live process owns (see :func:`open_owned_tmp`),
    whatever their age; returns how many were removed. Without ``flock`` (Windows), removes
    those older than a day instead. A temp file written without the lock counts as unowned.
    """
    if fcntl is None:
        return remove_stale_tmp_files(folder)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # gone already, or not ours to open
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: its writer is alive
            # Removed while we hold the lock, so a writer that locks it after us sees it unlinked.
            if _still_linked(entry.path, fd):
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def remove_stale_tmp_files(folder: Path, max_age_seconds: float = _STALE_TMP_SECONDS) -> int:
    """Delete temp files older than ``max_age_seconds``, whoever owns them; returns how many were
    removed. For temp files written without an owner's lock; see :func:`remove_unowned_tmp_files`."""
    removed = 0
    cutoff = time.time() - max_age_seconds
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith(".tmp") and entry.is_file():
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed
