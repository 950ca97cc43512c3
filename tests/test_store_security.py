"""The local store against a hostile or concurrent environment.

- loads return exactly the bytes of their URI even while another process rewrites the file;
- the restricted unpickler refuses pickles that would allocate far more than their own size
  (or crash numpy) instead of running them;
- temp files of a killed process are removed at once, those of a live one are left alone.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import pickletools
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kachery_core as kc
from kachery_core import _fs
from kachery_core.errors import HashMismatchError

# ---------------------------------------------------------------- check-then-read

_FLIPPER = """
import os, sys, time
pairs = []
for i in range(1, len(sys.argv), 3):
    fd = os.open(sys.argv[i], os.O_WRONLY)
    pairs.append((fd, bytes.fromhex(sys.argv[i + 1]), bytes.fromhex(sys.argv[i + 2])))
print("ready", flush=True)
while True:  # rewrite every file in place between its two contents, same size
    for fd, a, b in pairs:
        os.pwrite(fd, b, 0)
    for fd, a, b in pairs:
        os.pwrite(fd, a, 0)
"""


@pytest.fixture
def flipping(tmp_path: Path) -> Iterator[Callable[[str, bytes, bytes], str]]:
    """``add(name, a, b)``: a referenced file holding ``a`` (its URI is returned) that a child
    process keeps rewriting between ``a`` and ``b`` once ``start()`` is called."""
    files: list[tuple[Path, bytes, bytes]] = []
    procs: list[subprocess.Popen[str]] = []

    def add(name: str, a: bytes, b: bytes) -> str:
        assert len(a) == len(b) and a != b
        path = tmp_path / name
        path.write_bytes(a)
        files.append((path, a, b))
        return kc.store_file_local(path, reference=True)

    def start() -> None:
        args = [x for path, a, b in files for x in (str(path), a.hex(), b.hex())]
        proc = subprocess.Popen([sys.executable, "-c", _FLIPPER, *args], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    add.start = start  # type: ignore[attr-defined]
    yield add
    for proc in procs:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        # numpy itself loads a pickled big-endian array in native order: compare kinds and values
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype.str[1:] == y.dtype.str[1:]
                and x.shape == y.shape and np.array_equal(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return bool(x == y)


def _race(loads: dict[str, tuple[Callable[[], Any], Any]], seconds: float = 2.0) -> dict[str, list[int]]:
    """Call every load in turn for ``seconds``; per name: [right answers, refusals, wrong answers]."""
    counts = {name: [0, 0, 0] for name in loads}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, (load, expected) in loads.items():
            try:
                got = load()
            except HashMismatchError:
                counts[name][1] += 1
                continue
            counts[name][0 if _same(got, expected) else 2] += 1
    return counts


def test_loads_never_return_bytes_other_than_the_uri_s_while_the_file_is_rewritten(
    flipping: Any, tmp_path: Path
) -> None:
    n = 4096
    text_a, text_b = "a" * n, "b" * n
    json_a, json_b = {"v": "a" * n}, {"v": "b" * n}
    npy_a, npy_b = np.zeros(n // 8), np.ones(n // 8)
    pkl_a, pkl_b = {"v": b"a" * n, "arr": np.arange(64)}, {"v": b"b" * n, "arr": np.arange(64)}
    ser = kc._serializers
    u_text = flipping("t.txt", ser.text_to_bytes(text_a), ser.text_to_bytes(text_b))
    u_json = flipping("j.json", ser.json_to_bytes(json_a), ser.json_to_bytes(json_b))
    u_npy = flipping("a.npy", ser.npy_to_bytes(npy_a), ser.npy_to_bytes(npy_b))
    u_pkl = flipping("p.pkl", ser.pkl_to_bytes(pkl_a), ser.pkl_to_bytes(pkl_b))
    dest = tmp_path / "out" / "copy.txt"

    def cat() -> bytes:
        out = io.BytesIO()
        kc.cat_file(u_text, out=out)
        return out.getvalue()

    def to_dest() -> bytes:
        if dest.exists():
            dest.unlink()
        try:
            return Path(kc.load_file(u_text, dest=str(dest))).read_bytes()
        except HashMismatchError:
            assert not dest.exists(), "a copy that does not match was left at dest"
            raise

    flipping.start()
    counts = _race({
        "load_text": (lambda: kc.load_text(u_text), text_a),
        "load_json": (lambda: kc.load_json(u_json), json_a),
        "load_npy": (lambda: kc.load_npy(u_npy), npy_a),
        "load_pkl": (lambda: kc.load_pkl(u_pkl), pkl_a),
        "load_bytes": (lambda: kc.load_bytes(u_text), text_a.encode()),
        "cat_file": (cat, text_a.encode()),
        "load_file(dest=)": (to_dest, text_a.encode()),
    })
    wrong = {name: c[2] for name, c in counts.items() if c[2]}
    assert not wrong, f"loads returned bytes that do not match their URI: {wrong} (all counts: {counts})"
    # the writer really raced the loads: some of them saw the other content and refused it
    assert sum(c[1] for c in counts.values()) > 0, counts


_RENAMER = """
import os, sys
final, good, bad = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
print("ready", flush=True)
i = 0
while True:  # the store file is replaced, whole, by good or bad bytes of the same size
    i += 1
    tmp = f"{final}.{i}.swap"
    with open(tmp, "wb") as f:
        f.write(good if i % 2 else bad)
    os.replace(tmp, final)
"""


def test_ranges_come_from_the_file_that_was_verified_while_the_store_file_is_replaced(tmp_path: Path) -> None:
    good = bytes(range(256)) * 16
    bad = bytes(255 - b for b in good)
    uri = kc.store_file_local(_write(tmp_path / "g", good))
    final = Path(kc.load_file(uri))
    proc = subprocess.Popen([sys.executable, "-c", _RENAMER, str(final), good.hex(), bad.hex()],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        right = refused = 0
        wrong: list[bytes] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for lo, hi in [(10, 20), (1000, 3000), (0, 4095)]:
                try:
                    got = kc.load_bytes(uri, lo, hi)
                except (HashMismatchError, kc.KacheryFileNotFoundError):
                    refused += 1  # a bad copy (moved aside), or the moment after it was moved
                    continue
                if got == good[lo:hi]:
                    right += 1
                else:
                    wrong.append(got)
        assert not wrong, f"{len(wrong)} ranges were not the URI's bytes ({right} right, {refused} refused)"
        assert refused > 0
    finally:
        _stop(proc)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- unpickler allocation bombs


def _u(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE


def _g(module: str, name: str) -> bytes:
    return _u(module) + _u(name) + b"\x93"  # STACK_GLOBAL


def _i(n: int) -> bytes:
    if 0 <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _b(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data  # BINBYTES


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)  # LONG_BINGET


def _body(obj: Any) -> bytes:
    """The opcodes of a pickle of ``obj`` without PROTO/STOP (protocol 2: no frames, GLOBAL names)."""
    return pickletools.optimize(pickle.dumps(obj, protocol=2))[2:-1]


def _pk(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


_NP = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"


def _array_state(shape: tuple[int, ...], dtype: str, raw: bytes) -> bytes:
    return b"(" + _i(1) + _body(shape) + _body(np.dtype(dtype)) + b"\x89" + raw + b"t"  # MARK ... TUPLE


def _empty_array() -> bytes:
    return _g(_NP, "_reconstruct") + _g("numpy", "ndarray") + _body((0,)) + _b(b"b") + b"\x87R"


def _repeat_bytearray(size: int, times: int) -> bytes:
    # one bytes object in the pickle, copied `times` times through the memo
    out = _b(b"x" * size) + b"\x94" + _g("builtins", "bytearray") + b"\x94" + b"]"
    for _ in range(times):
        out += _get(1) + _get(0) + b"\x85Ra"  # bytearray(memo[0]), appended
    return _pk(out)


def _repeat_swapped_array(size: int, times: int) -> bytes:
    # one big rawdata; every array built from it with a byte-swapped dtype gets a copy
    out = _array_state((size // 8,), ">f8", _b(b"\0" * size)) + b"\x94]"
    for _ in range(times):
        out += _empty_array() + _get(0) + b"ba"
    return _pk(out)


BOMBS: dict[str, bytes] = {
    "bytearray(10**9)": _pk(_g("builtins", "bytearray") + _i(10**9) + b"\x85R"),
    "list(range(10**9))": _pk(_g("builtins", "list") + _g("builtins", "range") + _i(10**9) + b"\x85R\x85R"),
    "tuple(range(10**9))": _pk(_g("builtins", "tuple") + _g("builtins", "range") + _i(10**9) + b"\x85R\x85R"),
    "set(range(10**8))": _pk(_g("builtins", "set") + _g("builtins", "range") + _i(10**8) + b"\x85R\x85R"),
    "frozenset(range(10**8))": _pk(_g("builtins", "frozenset") + _g("builtins", "range") + _i(10**8) + b"\x85R\x85R"),
    "bytearray(range(10**9))": _pk(_g("builtins", "bytearray") + _g("builtins", "range") + _i(10**9) + b"\x85R\x85R"),
    "20,000 bytearray copies of one 64 KiB bytes": _repeat_bytearray(2**16, 20_000),
    "numpy _reconstruct(ndarray, (10**9,))": _pk(
        _g(_NP, "_reconstruct") + _g("numpy", "ndarray") + _body((10**9,)) + _b(b"b") + b"\x87R"
    ),
    "numpy ndarray((10**9,))": _pk(_g("numpy", "ndarray") + _body((10**9,)) + b"\x85R"),
    "numpy object array of 10**6 items from a 1-item list": _pk(
        _empty_array() + b"(" + _i(1) + _body((10**6,)) + _body(np.dtype(object)) + b"\x89" + b"]" + _i(7) + b"at" + b"b"
    ),
    "500 byte-swapped arrays from one 2 MiB buffer": _repeat_swapped_array(2 * 2**20, 500),
    "numpy array of 2**40 zero-size items": _pk(_empty_array() + _array_state((2**40,), "S0", _b(b"")) + b"b"),
    # SETITEM on a list or an array with a slice: the value (a lazy range) is materialized
    "list[0:0] = range(10**9)": _pk(b"]" + _g("builtins", "slice") + _i(0) + _i(0) + b"\x86R"
                                    + _g("builtins", "range") + _i(10**9) + b"\x85Rs"),
    "ndarray[:] = range(10**9)": _pk(_empty_array() + _array_state((0,), "<f8", _b(b"")) + b"b"
                                     + _g("builtins", "slice") + b"NNN\x87R" + _g("builtins", "range") + _i(10**9)
                                     + b"\x85Rs"),
}

_LOAD_BOMB = """
import resource, sys, tracemalloc
import numpy
from kachery_core import _serializers
data = open(sys.argv[1], "rb").read()
# enough address space for the interpreter, far too little for what the pickle asks for
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, hard))
tracemalloc.start()
try:
    _serializers.bytes_to_pkl(data)
    outcome = "loaded"
except BaseException as e:
    outcome = type(e).__name__
print(outcome, len(data), tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_pickle_that_would_allocate_far_more_than_its_size_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(BOMBS[name])
    # a child process with a capped address space: a bomb that goes off is a MemoryError there, not here
    proc = subprocess.run([sys.executable, "-c", _LOAD_BOMB, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the loader died ({proc.returncode}): {proc.stderr[-2000:]}"
    outcome, size, peak = proc.stdout.split()
    assert outcome == "UnsafePickleError", f"{name} ({size} bytes): {outcome}"
    assert int(peak) < 16 * 2**20, f"{name} allocated {int(peak):,} bytes before it was refused"


def test_the_refusal_names_what_was_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(BOMBS["bytearray(10**9)"])
    with pytest.raises(kc.UnsafePickleError, match="bytearray") as info:
        kc.load_pkl(kc.store_file_local(path))
    assert (info.value.module, info.value.name) == ("builtins", "bytearray")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_pickles_of_allowed_values_still_load_at_every_protocol(protocol: int) -> None:
    obj: dict[str, Any] = {
        "ba": bytearray(b"abc" * 100), "set": {1, 2, 3}, "fs": frozenset({"x"}), "r": range(2, 10**12, 3),
        "sl": slice(1, 5, None), "c": complex(1, 2), "t": (1, [2, {3: b"four"}]),
        "arr": np.arange(12, dtype=">f8").reshape(3, 4), "obj": np.array([{"a": 1}, None], dtype=object),
        "scalar": np.float32(2.5), "dt": np.dtype([("a", "<i4"), ("b", ">f8", (2,))]), "empty": np.zeros((0, 3)),
        "shared": [np.arange(3)] * 2,
    }
    out = kc._serializers.bytes_to_pkl(pickle.dumps(obj, protocol=protocol))
    assert out.keys() == obj.keys()
    for k in obj:
        assert _same(out[k], obj[k]) or (k == "obj" and list(out[k]) == list(obj[k])), k
    assert out["shared"][0] is out["shared"][1]


# ---------------------------------------------------------------- numpy states that numpy trusts

_multiarray = importlib.import_module(_NP)
_numeric = importlib.import_module(_NP.replace("multiarray", "numeric"))


class _Dtype:
    """Pickles as numpy pickles a dtype, ``dtype(spec, False, True)``, but with the BUILD state given."""

    def __init__(self, spec: str, state: tuple[Any, ...]) -> None:
        self.spec, self.state = spec, state

    def __reduce__(self) -> Any:
        return (np.dtype, (self.spec, False, True), self.state)


class _Array:
    """Pickles as numpy pickles an array: ``_reconstruct(ndarray, (0,), b"b")``, then its state."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, raw: Any) -> None:
        self.state = (1, shape, dtype, False, raw)

    def __reduce__(self) -> Any:
        return (_multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state)


class _Call:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return (self.func, self.args)


def _plain(byteorder: str, flags: int, elsize: int = -1, alignment: int = -1) -> tuple[Any, ...]:
    return (3, byteorder, None, None, None, elsize, alignment, flags)


def _dtype_changed_after_use() -> bytes:
    # a V8 dtype (memo 0) gives an array its 16 bytes, then a second BUILD makes it a field of objects
    objects = np.dtype({"names": ["a"], "formats": ["O"], "offsets": [0], "itemsize": 8})
    return _pk(_g("numpy", "dtype") + _u("V8") + b"\x89\x88\x87R\x94" + b"0" + _empty_array()
               + b"(" + _i(1) + _body((2,)) + _get(0) + b"\x89" + _b(b"\x41" * 16) + b"tb"
               + _get(0) + _body(objects.__reduce__()[2]) + b"b0")


_O, _F8, _PTRS = np.dtype("O"), np.dtype("<f8"), b"\x41" * 16  # 0x4141... read as object pointers
#: Each loaded (before it was refused) a value that crashes the interpreter when used or freed,
#: reads memory outside its data, or breaks numpy's own invariants.
NUMPY_STATES: dict[str, Any] = {
    "object dtype whose flags say it holds no objects (tolist)": _Array((2,), _Dtype("O8", _plain("|", 0)), _PTRS),
    "object dtype with only its refcount flag (del)": _Array((2,), _Dtype("O8", _plain("|", 1)), _PTRS),
    "structured dtype with an object field, raw bytes": _Array(
        (2,), _Dtype("V8", (3, "|", None, ("a",), {"a": (_O, 0)}, 8, 8, 1)), _PTRS),
    "subarray of objects, raw bytes": _Array((1,), _Dtype("V16", (3, "|", (_O, (2,)), None, None, 16, 8, 0)), _PTRS),
    "object scalar from raw bytes": _Call(_multiarray.scalar, _Dtype("O8", _plain("|", 0)), b"\x41" * 8),
    "object array from a buffer": _Call(_numeric._frombuffer, _PTRS, _Dtype("O8", _plain("|", 0)), (2,), "C"),
    "dtype given object fields after an array uses it": _dtype_changed_after_use(),
    "field beyond the itemsize (reads past the data)": _Array(
        (1,), _Dtype("V8", (3, "|", None, ("a",), {"a": (_F8, 1000)}, 8, 1, 16)), b"\x41" * 8),
    "field at a negative offset (reads before the data)": _Array(
        (1,), _Dtype("V8", (3, "|", None, ("a",), {"a": (_F8, -1000)}, 8, 1, 16)), b"\x41" * 8),
    "subarray larger than its itemsize": _Array((1,), _Dtype("V8", (3, "|", (_F8, (1000,)), None, None, 8, 8, 0)),
                                                b"\x41" * 8),
    "str dtype with an itemsize that is not whole characters": _Array(
        (2,), _Dtype("U2", _plain("<", 8, elsize=3, alignment=4)), b"\x41" * 6),
}

_LOAD_AND_USE = """
import gc, sys
from kachery_core import _serializers
from kachery_core.errors import UnsafePickleError
try:
    x = _serializers.bytes_to_pkl(open(sys.argv[1], "rb").read())
except UnsafePickleError as e:
    print("UnsafePickleError:", e)
    sys.exit(0)
print("loaded", flush=True)
repr(x)
getattr(x, "tolist", list)()
del x
gc.collect()
print("used and freed", flush=True)
"""


@pytest.mark.parametrize("name", list(NUMPY_STATES))
def test_a_numpy_state_numpy_itself_would_never_pickle_is_refused(name: str, tmp_path: Path) -> None:
    value = NUMPY_STATES[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(value if isinstance(value, bytes) else pickle.dumps(value, protocol=4))
    # in a child process: a value that goes off kills the child (SIGSEGV), not pytest
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_USE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{name}: the loader died ({proc.returncode}): {proc.stdout} {proc.stderr[-1500:]}"
    assert proc.stdout.startswith("UnsafePickleError:"), f"{name}: {proc.stdout} {proc.stderr[-1500:]}"


def test_a_structured_array_with_object_fields_is_refused_at_store_time() -> None:
    arr = np.array([(1, {"a": 1})], dtype=[("n", "<i4"), ("o", "O")])
    with pytest.raises(kc.UnsafePickleError, match="object"):
        kc.store_pkl_local(arr)


# ---------------------------------------------------------------- temp files of killed processes

_OWNER = """
import sys, time
from pathlib import Path
from kachery_core import _fs
path, f = _fs.open_owned_tmp(Path(sys.argv[1]), ".download.tmp")
f.write(b"partial download")
f.flush()
print(path, flush=True)
time.sleep(600)
"""


def _owner(folder: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_temp_files_of_a_killed_process_are_removed_at_once_and_a_live_one_s_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "tmp"
    folder.mkdir()
    killed, killed_file = _owner(folder)
    alive, alive_file = _owner(folder)
    try:
        killed.send_signal(signal.SIGKILL)
        _stop(killed)
        stray = _write(folder / "left-by-an-old-version.tmp", b"x")  # no owner at all
        other = _write(folder / "not-a-temp-file", b"x")
        assert killed_file.exists() and alive_file.exists()
        assert _fs.remove_unowned_tmp_files(folder) == 2
        assert not killed_file.exists() and not stray.exists()
        assert alive_file.read_bytes() == b"partial download" and other.exists()
    finally:
        _stop(alive)
    assert _fs.remove_unowned_tmp_files(folder) == 1
    assert not alive_file.exists()


def test_own_temp_files_are_not_removed_by_this_process_either(tmp_path: Path) -> None:
    path, f = _fs.open_owned_tmp(tmp_path, ".tmp")
    with f:
        f.write(b"mine")
        assert _fs.remove_unowned_tmp_files(tmp_path) == 0
        assert path.exists()
    assert _fs.remove_unowned_tmp_files(tmp_path) == 1


def test_a_new_process_that_stores_removes_what_a_killed_download_left(tmp_path: Path, kachery_dir: Path) -> None:
    folder = kachery_dir / "sha1" / ".tmp"
    folder.mkdir(parents=True)
    killed, left = _owner(folder)
    alive, kept = _owner(folder)
    try:
        killed.send_signal(signal.SIGKILL)
        _stop(killed)
        src = _write(tmp_path / "s.bin", os.urandom(1000))
        code = "import sys, kachery_core as kc; print(kc.store_file_local(sys.argv[1]))"
        out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, check=True)
        assert hashlib.sha1(src.read_bytes()).hexdigest() in out.stdout
        assert not left.exists(), "a partial download of a killed process was kept"
        assert kept.exists(), "a live process's partial download was removed"
    finally:
        _stop(alive)
