from __future__ import annotations

import math
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kachery_core as kc
from kachery_core.errors import SerializationError, UnsafePickleError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json_round_trip(obj: Any) -> None:
    assert kc.load_json(kc.store_json_local(obj)) == obj


@given(st.dictionaries(st.text(), st.integers(), max_size=8))
def test_json_uri_does_not_depend_on_key_order(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert kc.store_json_local(d) == kc.store_json_local(reversed_d)


def test_json_bytes_are_the_documented_form() -> None:
    uri = kc.store_json_local({"b": [1, 2], "a": "é"})
    assert Path(kc.load_file(uri)).read_bytes() == b'{"a":"\\u00e9","b":[1,2]}'
    # sha1_of_dict hashes the same bytes, as kachery-cloud did
    assert kc.sha1_of_dict({"b": [1, 2], "a": "é"}) == kc.parse_sha1_uri(uri).sha1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [1.0, math.nan]}])
def test_json_refuses_nan_and_infinity(bad: Any) -> None:
    with pytest.raises(SerializationError, match="NaN and Infinity are not JSON"):
        kc.store_json_local(bad)


@pytest.mark.parametrize("bad", [object(), {1, 2}, {"k": b"bytes"}, np.arange(3)])
def test_json_refuses_non_json_objects(bad: Any) -> None:
    with pytest.raises(SerializationError, match="cannot store as JSON") as info:
        kc.store_json_local(bad)
    assert isinstance(info.value, ValueError)


@given(st.text())
def test_text_round_trip(text: str) -> None:
    assert kc.load_text(kc.store_text_local(text)) == text


def test_text_requires_str() -> None:
    with pytest.raises(SerializationError, match="expects a str, got bytes"):
        kc.store_text_local(b"abc")  # type: ignore[arg-type]


@given(hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(max_dims=3, max_side=5)))
def test_npy_round_trip(arr: np.ndarray) -> None:
    out = kc.load_npy(kc.store_npy_local(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_npy_refuses_object_arrays_and_non_arrays() -> None:
    with pytest.raises(SerializationError, match="dtype object"):
        kc.store_npy_local(np.array([{"a": 1}], dtype=object))
    with pytest.raises(SerializationError, match="expects a numpy.ndarray, got list"):
        kc.store_npy_local([1, 2, 3])


def test_same_array_same_uri_in_another_process(kachery_dir: Any) -> None:
    arr = np.arange(12, dtype="<f8").reshape(3, 4)
    code = "import numpy as np, kachery_core as kc; print(kc.store_npy_local(np.arange(12, dtype='<f8').reshape(3, 4)))"
    out = subprocess.run(["python", "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == kc.store_npy_local(arr)


pkl_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary() | st.complex_numbers(allow_nan=False),
    lambda children: st.lists(children, max_size=3)
    | st.tuples(children, children)
    | st.dictionaries(st.text(), children, max_size=3)
    | st.frozensets(st.integers(), max_size=3),
    max_leaves=12,
)


@given(pkl_values)
def test_pkl_round_trip_of_builtin_values(obj: Any) -> None:
    assert kc.load_pkl(kc.store_pkl_local(obj)) == obj


def test_pkl_round_trip_of_numpy() -> None:
    obj = {"arr": np.arange(6).reshape(2, 3), "scalar": np.float32(1.5), "ints": [np.int64(3)], "s": {1, 2}}
    out = kc.load_pkl(kc.store_pkl_local(obj))
    np.testing.assert_array_equal(out["arr"], obj["arr"])
    assert out["scalar"] == np.float32(1.5) and out["scalar"].dtype == np.float32
    assert out["ints"] == [3] and out["s"] == {1, 2}


_NUMERIC = ["?", "i1", "u1", "<i2", ">i2", "<u4", ">u8", "<i8", "<f2", ">f4", "<f8", ">f8", "<c8", ">c16",
            "g", "G", "<M8[ns]", ">M8[D]", "<M8", "<M8[5s]", "<m8[us]", ">m8[25ms]", "S5", "<U3", ">U2", "V6"]
_STRUCTURED = [
    [("a", "<i4"), ("b", ">f8", (2,))],
    {"names": ["a", "b"], "formats": ["<i4", "<i2"], "offsets": [8, 0], "itemsize": 16},  # gaps, out of order
    {"names": ["a", "b"], "formats": ["u1", "<u2"], "offsets": [0, 0], "itemsize": 2},  # overlapping
    {"names": ["a", "b"], "formats": ["<i4", "<f8"], "titles": ["the a", None]},
    [("x", [("y", "<f4"), ("z", "S2", (3,))]), ("t", "<M8[s]")],
    ("<i4", (2, 3)),
]


@pytest.mark.parametrize("protocol", [3, 4, 5])  # store_pkl writes 4
def test_pkl_round_trip_of_every_kind_of_plain_numpy_value(protocol: int) -> None:
    rng = np.random.default_rng(0)
    values: list[Any] = []
    for code in _NUMERIC:
        dt = np.dtype(code)
        arr = np.frombuffer(rng.bytes(dt.itemsize * 12), dtype=dt).reshape(3, 4)
        if dt.kind == "U":
            arr = np.array([["ab", "c", "", "xyz"]] * 3, dtype=dt)
        values += [arr, np.asfortranarray(arr), arr[::2, ::-1], arr[0, 0], arr.reshape(-1)[:1].reshape(()), dt]
    for spec in _STRUCTURED:
        for align in ([False, True] if isinstance(spec, list) else [False]):
            dt = np.dtype(spec, align=align)  # type: ignore[call-overload]
            arr = np.frombuffer(rng.bytes(dt.itemsize * 4), dtype=dt)
            values += [arr, arr[0], dt]
    values += [np.array([{"a": 1}, None, [np.arange(3)], "s"], dtype=object), np.empty((0, 3), dtype=object),
               np.array(None, dtype=object), np.zeros((0, 2)), np.int64(3), np.str_("ab"), np.bytes_(b"x"),
               np.datetime64("2020-01-01T12:00"), np.timedelta64(5, "ms"), np.bool_(True), np.longdouble(1) / 3]
    out = kc._serializers.bytes_to_pkl(pickle.dumps(values, protocol=protocol))
    assert len(out) == len(values)
    for got, want in zip(out, values):
        assert type(got) is type(want)
        if isinstance(want, np.dtype):
            assert got.__reduce__() == want.__reduce__()
        elif isinstance(want, np.generic):
            assert got.dtype.__reduce__() == want.dtype.__reduce__() and got.tobytes() == want.tobytes()
        elif want.dtype.hasobject:
            assert repr(got) == repr(want)
        else:  # numpy itself loads some big-endian arrays in native order: the same values
            same = got if got.dtype.__reduce__() == want.dtype.__reduce__() else got.astype(want.dtype)
            assert got.shape == want.shape and same.tobytes() == want.tobytes()
            if want.flags.f_contiguous and not want.flags.c_contiguous:
                assert got.flags.f_contiguous


class _Custom:
    pass


class _RunsCode:
    def __reduce__(self) -> Any:
        return (os.system, ("touch pwned",))


def test_pkl_store_refuses_disallowed_classes() -> None:
    with pytest.raises(UnsafePickleError, match="_Custom"):
        kc.store_pkl_local(_Custom())


def test_pickle_that_would_run_code_is_refused_on_load(tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCode(), protocol=4).replace(b"touch pwned", f"touch {marker}".encode())
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    uri = kc.store_file_local(path)
    with pytest.raises(UnsafePickleError) as info:
        kc.load_pkl(uri)
    assert (info.value.module, info.value.name) == ("posix", "system")
    assert not marker.exists(), "the pickle's code ran"


def test_a_str_scalar_past_the_last_code_point_is_a_serialization_error() -> None:
    data = pickle.dumps(np.str_("a"), protocol=4).replace(b"a\x00\x00\x00", b"\xff\xff\xff\xff")
    with pytest.raises(SerializationError, match="not a valid pickle"):
        kc._serializers.bytes_to_pkl(data)


def test_garbage_pickle_is_a_serialization_error(tmp_path: Any) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(SerializationError, match="not a valid pickle"):
        kc.load_pkl(kc.store_file_local(path))


@pytest.mark.parametrize(
    ("obj", "fast_loads"),
    [({"n": list(range(1000)), "a": np.arange(3)}, 0), ([np.float64(1.5)] * 3, 0), ({"n": list(range(1000))}, 1)],
    ids=["dict-with-an-array", "numpy-scalars", "builtins-only"],
)
def test_a_pickle_naming_numpy_is_read_once_by_the_checked_unpickler(
    monkeypatch: pytest.MonkeyPatch, obj: Any, fast_loads: int
) -> None:
    from kachery_core import _serializers

    loads = {"fast": 0, "checked": 0}

    class Fast(_serializers.RestrictedUnpickler):
        def load(self) -> Any:
            loads["fast"] += 1
            return super().load()

    class Checked(_serializers._CheckedUnpickler):
        def load(self) -> Any:
            loads["checked"] += 1
            return super().load()

    monkeypatch.setattr(_serializers, "RestrictedUnpickler", Fast)
    monkeypatch.setattr(_serializers, "_CheckedUnpickler", Checked)
    data = pickle.dumps(obj, protocol=5)
    loaded = _serializers.bytes_to_pkl(data)
    assert pickle.dumps(loaded, protocol=5) == data
    assert loads == {"fast": fast_loads, "checked": 1 - fast_loads}  # no pass thrown away


@pytest.mark.parametrize("data", [
    b'\x80\x05\x95\\\x00\x00\x00\x00\x00\x00\x8c\x05n\x04mpy\x94\x8c\x05dtype\x94\x93\x94\x8c\x02V6\x94\x89\x88\x87\x94R\x94K\x03\x8c\x01|\x94h\x02\x8c\x02i2\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94bK\x03\x85\x94\x86\x94NNK\x06K\x02K\x00t\x94b.',
    b'\x80\x04\x95`\x00\x00\x00\x00\x00\x00\x00\x8c\x16numpy._core.multiarray\x94\x8c\x06scalar\x94\x93\x94\x8c\x05numpy\x94\x8c\x05dtype\x94\x93\x94\x8c\x02V4\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNK\x04K\x01K\x00t\x94bC\x04abcd\x94\x86\x94R\x94\x8d',
], ids=["frame-length-overflow", "truncated-length"])
def test_a_mangled_pickle_is_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="not a valid pickle"):
        kc._serializers.bytes_to_pkl(data)
