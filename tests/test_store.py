from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import count_hashed_bytes

import kachery_core as kc
from kachery_core import _hashing
from kachery_core.errors import ByteRangeError, HashMismatchError, KacheryFileNotFoundError


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _store_file_for(kachery_dir: Path, sha1: str) -> Path:
    return kachery_dir / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def test_store_file_local_copies_into_the_layout(tmp_path: Path, kachery_dir: Path) -> None:
    data = os.urandom(100_000)
    src = _write(tmp_path / "data.bin", data)
    uri = kc.store_file_local(src, label="data.bin")
    sha1 = hashlib.sha1(data).hexdigest()
    assert uri == f"sha1://{sha1}?label=data.bin"
    stored = _store_file_for(kachery_dir, sha1)
    assert stored.read_bytes() == data
    assert kc.load_file(uri) == str(stored)
    # the store holds a copy: changing the source does not change the stored content
    src.write_bytes(b"changed")
    assert stored.read_bytes() == data
    assert not list((kachery_dir / "sha1" / ".tmp").iterdir())


def test_store_twice_and_from_a_uri(tmp_path: Path) -> None:
    src = _write(tmp_path / "a", b"hello")
    uri = kc.store_file_local(src)
    assert kc.store_file_local(src) == uri
    assert kc.store_file_local(uri, label="again") == uri + "?label=again"


def test_large_file_hash_is_cached_and_invalidated_by_a_change(tmp_path: Path) -> None:
    src = _write(tmp_path / "big", os.urandom(2_000_000))
    uri = kc.store_file_local(src)
    st = os.stat(src)
    assert _hashing.cached_sha1(str(src), st) == kc.parse_sha1_uri(uri).sha1
    with open(src, "r+b") as f:
        f.write(b"\x00\x01")
    assert _hashing.cached_sha1(str(src), os.stat(src)) is None
    new_uri = kc.store_file_local(src)
    assert new_uri != uri
    assert Path(kc.load_file(new_uri)).read_bytes() == src.read_bytes()


def test_reference_does_not_copy_and_verifies_on_load(tmp_path: Path, kachery_dir: Path) -> None:
    src = _write(tmp_path / "ref.txt", b"referenced content")
    uri = kc.store_file_local(src, reference=True)
    sha1 = hashlib.sha1(b"referenced content").hexdigest()
    assert uri == f"sha1://{sha1}?location={src}"
    assert not _store_file_for(kachery_dir, sha1).exists()
    assert kc.load_file(uri) == str(src)
    assert kc.load_text(uri) == "referenced content"
    src.write_bytes(b"someone edited it")
    with pytest.raises(HashMismatchError) as info:
        kc.load_file(uri)
    assert info.value.expected == sha1 and info.value.path == str(src)
    assert src.read_bytes() == b"someone edited it", "a referenced file is the user's: never moved or deleted"
    src.unlink()
    with pytest.raises(KacheryFileNotFoundError, match="nor at"):
        kc.load_file(uri)


def test_corrupted_store_file_is_detected_and_not_returned(tmp_path: Path, kachery_dir: Path) -> None:
    data = os.urandom(3_000_000)  # big enough that its hash is cached
    uri = kc.store_file_local(_write(tmp_path / "x", data))
    stored = Path(kc.load_file(uri))
    st = os.stat(stored)
    with open(stored, "r+b") as f:  # flip a byte, then hide the change from mtime
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(HashMismatchError) as info:
        kc.load_file(uri)
    assert info.value.uri == uri
    assert not stored.exists(), "the corrupt file was moved aside"
    assert len(list((kachery_dir / "sha1" / ".corrupt").iterdir())) == 1
    with pytest.raises(KacheryFileNotFoundError):
        kc.load_file(uri)
    # storing the original again repairs the store
    assert kc.store_file_local(_write(tmp_path / "x2", data)) == uri
    assert Path(kc.load_file(uri)).read_bytes() == data


def test_small_corrupt_file_is_detected(tmp_path: Path) -> None:
    uri = kc.store_text_local("small")
    Path(kc.load_file(uri)).write_text("evil!")
    with pytest.raises(HashMismatchError):
        kc.load_text(uri)


def test_missing_content_and_missing_source(tmp_path: Path) -> None:
    uri = "sha1://" + "0" * 40
    with pytest.raises(KacheryFileNotFoundError, match="not in the local store") as info:
        kc.load_file(uri)
    assert isinstance(info.value, FileNotFoundError) and info.value.uri == uri
    with pytest.raises(KacheryFileNotFoundError, match="no such file to store"):
        kc.store_file_local(tmp_path / "nope")
    with pytest.raises(KacheryFileNotFoundError, match="not a regular file"):
        kc.store_file_local(tmp_path)


def test_load_file_dest(tmp_path: Path) -> None:
    uri = kc.store_text_local("to copy")
    dest = tmp_path / "out" / "copy.txt"
    assert kc.load_file(uri, dest=str(dest)) == str(dest)
    assert dest.read_text() == "to copy"


def test_load_bytes_ranges(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    uri = kc.store_file_local(_write(tmp_path / "r", data))
    assert kc.load_bytes(uri, 10, 20) == data[10:20]
    assert kc.load_bytes(uri, 2550, None) == data[2550:]
    assert kc.load_bytes(uri) == data
    assert kc.load_bytes(uri, 5, 5) == b""
    for start, end in [(-1, 3), (5, 4), (0, 2561)]:
        with pytest.raises(ByteRangeError, match="outside the 2560 bytes"):
            kc.load_bytes(uri, start, end)


def test_cat_file_and_info(tmp_path: Path) -> None:
    uri = kc.store_text_local("catted", label="c.txt")
    out = io.BytesIO()
    kc.cat_file(uri, out=out)
    assert out.getvalue() == b"catted"
    info = kc.load_file_info(uri)
    assert info["size"] == 6 and info["label"] == "c.txt" and info["sha1"] == kc.parse_sha1_uri(uri).sha1


def test_files_written_by_kachery_cloud_are_loaded(kachery_dir: Path) -> None:
    # An existing ~/.kachery-cloud: a file placed where kachery-cloud puts it, no hash-cache entry.
    data = b"stored by kachery-cloud 0.4"
    sha1 = hashlib.sha1(data).hexdigest()
    p = _store_file_for(kachery_dir, sha1)
    p.parent.mkdir(parents=True)
    p.write_bytes(data)
    assert kc.load_text(f"sha1://{sha1}?label=old.txt") == data.decode()


def test_multiuser_mode_makes_shared_files(tmp_path: Path, kachery_dir: Path) -> None:
    kachery_dir.mkdir(parents=True, exist_ok=True)
    (kachery_dir / "config.yaml").write_text("multiuser: true\n")
    old = os.umask(0o022)
    try:
        uri = kc.store_file_local(_write(tmp_path / "m", b"shared"))
        kc.set_mutable_local("team/x", "1")
    finally:
        os.umask(old)
    stored = Path(kc.load_file(uri))
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o777
    assert stat.S_IMODE((kachery_dir / "mutables" / "@team").stat().st_mode) == 0o777


def test_bad_config_is_a_clear_error(tmp_path: Path, kachery_dir: Path) -> None:
    kachery_dir.mkdir(parents=True, exist_ok=True)
    (kachery_dir / "config.yaml").write_text("multiuser: maybe\n")
    with pytest.raises(kc.ConfigError, match="multiuser must be true or false"):
        kc.store_text_local("x")


_CRASH_BEFORE_RENAME = """
import os, sys
import kachery_core as kc
from kachery_core import _fs
def crash(*a, **k):
    os._exit(17)  # the process dies between the temp write and the rename
_fs.os.replace = crash
kc.store_file_local(sys.argv[1])
"""


def test_crash_between_write_and_rename_leaves_nothing_visible(tmp_path: Path, kachery_dir: Path) -> None:
    data = os.urandom(500_000)
    src = _write(tmp_path / "crash.bin", data)
    sha1 = hashlib.sha1(data).hexdigest()
    proc = subprocess.run([sys.executable, "-c", _CRASH_BEFORE_RENAME, str(src)], env=os.environ)
    assert proc.returncode == 17
    tmp_files = list((kachery_dir / "sha1" / ".tmp").iterdir())
    assert len(tmp_files) == 1 and tmp_files[0].stat().st_size == len(data), "the copy was complete, only unrenamed"
    assert not _store_file_for(kachery_dir, sha1).exists()
    with pytest.raises(KacheryFileNotFoundError):
        kc.load_file(f"sha1://{sha1}")
    # the retry succeeds, and removes the dead writer's temp file (no live owner) at once
    uri = kc.store_file_local(src)
    assert Path(kc.load_file(uri)).read_bytes() == data
    assert not tmp_files[0].exists()


_WORKER = """
import sys, kachery_core as kc
for path in sys.argv[1:]:
    print(kc.store_file_local(path))
"""


def test_eight_processes_store_same_and_different_content(tmp_path: Path, kachery_dir: Path) -> None:
    shared = [_write(tmp_path / f"shared{i}", os.urandom(1_500_000)) for i in range(3)]
    procs = []
    own_files = []
    for w in range(8):
        own = _write(tmp_path / f"own{w}", os.urandom(700_000 + w))
        own_files.append(own)
        # every worker stores the shared files (in a different order) and its own
        order = shared[w % 3 :] + shared[: w % 3] + [own]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, *map(str, order)], env=os.environ, stdout=subprocess.PIPE, text=True
            )
        )
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outputs.append(out.split())
    for path in shared + own_files:
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        assert _store_file_for(kachery_dir, sha1).read_bytes() == data
    for out in outputs:
        for uri in out:
            kc.load_file(uri)  # verifies the hash
    assert not list((kachery_dir / "sha1" / ".tmp").iterdir())


def _count_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each temp file the store opens and each in-kernel copy it makes."""
    from kachery_core import _fs

    seen: list[str] = []
    open_owned_tmp = _fs.open_owned_tmp

    def counted_tmp(*args: Any, **kwargs: Any) -> Any:
        seen.append("temp file")
        return open_owned_tmp(*args, **kwargs)

    monkeypatch.setattr(_fs, "open_owned_tmp", counted_tmp)
    if hasattr(os, "copy_file_range"):
        copy_file_range = os.copy_file_range

        def counted_copy(*args: Any) -> int:
            seen.append("copy_file_range")
            return copy_file_range(*args)

        monkeypatch.setattr(os, "copy_file_range", counted_copy)
    return seen


def test_content_the_store_holds_is_not_copied_again_from_a_new_path(
    tmp_path: Path, kachery_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(9 * 2**20)
    sha1 = hashlib.sha1(data).hexdigest()
    assert kc.store_file_local(_write(tmp_path / "a.bin", data)) == f"sha1://{sha1}"
    stored = _store_file_for(kachery_dir, sha1)
    inode = stored.stat().st_ino
    (tmp_path / "elsewhere").mkdir()
    twin = _write(tmp_path / "elsewhere" / "b.bin", data)  # a real copy: a path and inode never hashed
    seen = _count_copies(monkeypatch)
    assert kc.store_file_local(twin, label="b.bin") == f"sha1://{sha1}?label=b.bin"
    assert seen == []
    assert stored.stat().st_ino == inode
    assert not list((kachery_dir / "sha1" / ".tmp").iterdir())


def test_same_size_head_and_tail_but_other_content_is_still_stored(
    tmp_path: Path, kachery_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = bytearray(os.urandom(9 * 2**20))
    kc.store_file_local(_write(tmp_path / "a.bin", bytes(first)))
    first[5 * 2**20] ^= 1  # differs only in the middle
    second = bytes(first)
    seen = _count_copies(monkeypatch)
    uri = kc.store_file_local(_write(tmp_path / "b.bin", second))
    assert uri == f"sha1://{hashlib.sha1(second).hexdigest()}"
    assert seen[0] == "temp file"  # copied after all, once the hash said it is new
    assert Path(kc.load_file(uri)).read_bytes() == second


def test_content_held_without_a_head_record_is_copied_once_then_recognised(
    tmp_path: Path, kachery_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store filled by kachery-cloud (or before heads were recorded) learns the head on the next store."""
    data = os.urandom(9 * 2**20)
    sha1 = hashlib.sha1(data).hexdigest()
    stored = _store_file_for(kachery_dir, sha1)
    stored.parent.mkdir(parents=True)
    stored.write_bytes(data)
    seen = _count_copies(monkeypatch)
    assert kc.store_file_local(_write(tmp_path / "a.bin", data)) == f"sha1://{sha1}"
    assert "temp file" in seen
    seen.clear()
    assert kc.store_file_local(_write(tmp_path / "b.bin", data)) == f"sha1://{sha1}"
    assert seen == []


def test_storing_works_where_os_has_no_copy_file_range(
    tmp_path: Path, kachery_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no copy_file_range: the copy falls back to reading and writing."""
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    data = os.urandom(3 * 2**20)
    uri = kc.store_file_local(_write(tmp_path / "a.bin", data))
    assert Path(kc.load_file(uri)).read_bytes() == data


@pytest.mark.parametrize("size", [100_000, 3_000_000], ids=["small", "streamed"])
def test_cat_file_reads_and_hashes_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    from kachery_core import _store

    monkeypatch.setattr(_store, "_CAT_VERIFY_FIRST_BYTES", 1_000_000)  # 3 MB streams as a big file does
    data = os.urandom(size)
    uri = kc.store_file_local(_write(tmp_path / "f", data))
    sha1 = kc.parse_sha1_uri(uri).sha1
    _hashing._cache_path(str(_store.store_path(sha1))).unlink(missing_ok=True)  # nothing vouches for it yet
    hashed = count_hashed_bytes(monkeypatch)
    out = io.BytesIO()
    kc.cat_file(uri, out=out)
    assert out.getvalue() == data
    assert sum(hashed) == size  # one pass, not a check before the copy and another during it


def test_cat_file_of_a_big_corrupt_store_file_raises_after_writing_and_tries_nothing_else(
    tmp_path: Path, kachery_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kachery_core import _store

    monkeypatch.setattr(_store, "_CAT_VERIFY_FIRST_BYTES", 1000)
    data = os.urandom(5000)
    src = _write(tmp_path / "ref", data)
    uri = kc.store_file_local(src)
    sha1 = kc.parse_sha1_uri(uri).sha1
    store_file = _store.store_path(sha1)
    os.chmod(store_file, 0o644)
    store_file.write_bytes(b"x" * 5000)
    with_location = kc.store_file_local(src, reference=True)
    out = io.BytesIO()
    with pytest.raises(HashMismatchError):
        kc.cat_file(with_location, out=out)
    assert out.getvalue() == b"x" * 5000  # written once, not followed by the other source's bytes
    assert not store_file.exists()  # moved aside: the next read finds the good copy
    out = io.BytesIO()
    kc.cat_file(with_location, out=out)
    assert out.getvalue() == data


def test_a_range_of_a_small_file_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(200_000)  # under the hash cache's minimum: nothing vouches for it
    uri = kc.store_file_local(_write(tmp_path / "r", data))
    hashed = count_hashed_bytes(monkeypatch)
    assert kc.load_bytes(uri, 10, 20) == data[10:20]
    assert sum(hashed) == len(data)
