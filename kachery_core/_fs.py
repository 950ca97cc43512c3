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
"""

from __future__ import annotations

import os
import time
from pathlib import Path

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


def remove_stale_tmp_files(folder: Path, max_age_seconds: float = _STALE_TMP_SECONDS) -> int:
    """Delete temp files left by crashed writers; returns how many were removed."""
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
