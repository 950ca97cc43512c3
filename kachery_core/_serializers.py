"""Deterministic bytes for Python objects: the same object gives the same URI everywhere.

- text: UTF-8
- JSON: sorted keys, separators ``(',', ':')``, ASCII escapes, NaN/Infinity refused
- npy: ``numpy.save`` with ``allow_pickle=False``
- pkl: pickle protocol 4; loaded only through an unpickler that allows
  builtin containers and numpy arrays/scalars, and refuses a pickle that would
  build more items or bytes than it holds itself (an allocation bomb)
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from .errors import SerializationError, UnsafePickleError

PICKLE_PROTOCOL = 4  # fixed so that Python upgrades do not change URIs
_NPY_MAGIC = b"\x93NUMPY"


def what_it_is(data: bytes) -> str:
    """What ``data`` looks like ("an npy array", "a pickle", "JSON", "text", "binary data"),
    so that loading it the wrong way can say what it is instead of what the loader expected."""
    if data.startswith(_NPY_MAGIC):
        return "an npy array"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    try:
        json.loads(data)
        return "JSON"
    except (ValueError, RecursionError):
        pass
    try:
        data.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "binary data"


def text_to_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise SerializationError(f"store_text expects a str, got {type(text).__name__}")
    return text.encode("utf-8")


def bytes_to_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        what = what_it_is(data)
        raise SerializationError(f"content is not UTF-8 text: it is {what}" if what != "binary data"
                                 else f"content is not UTF-8 text ({e})") from None


def json_dumps_deterministic(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        # json says "Out of range float values are not JSON compliant"
        raise SerializationError(f"cannot store as JSON: {e} (NaN and Infinity are not JSON)") from None
    except TypeError as e:
        raise SerializationError(f"cannot store as JSON: {e}") from None


def json_to_bytes(obj: Any) -> bytes:
    return json_dumps_deterministic(obj).encode("utf-8")


def bytes_to_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        what = what_it_is(data)
        raise SerializationError(f"content is not JSON: it is {what}" if what in ("an npy array", "a pickle")
                                 else f"content is not JSON ({e})") from None


def npy_to_bytes(array: Any) -> bytes:
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise SerializationError(f"store_npy expects a numpy.ndarray, got {type(array).__name__}")
    buf = io.BytesIO()
    try:
        np.save(buf, array, allow_pickle=False)
    except ValueError as e:
        raise SerializationError(f"cannot store array of dtype {array.dtype} as npy: {e}") from None
    return buf.getvalue()


def bytes_to_npy(data: bytes) -> Any:
    import numpy as np

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        # numpy takes anything else for a pickle and says how to load one unsafely: say what it is instead
        what = what_it_is(data)
        raise SerializationError(f"content is not an npy array: it is {what}" if what != "an npy array"
                                 else f"content is not a loadable npy array ({e})") from None


class _Budget:
    """What the allowed callables may build, in total: no more items or bytes than the pickle
    has bytes. A pickle of plain values spells out every byte and every item it holds, so it
    stays within this; a pickle that makes much more from little (``bytearray(10**9)``,
    ``list(range(10**9))``, the same buffer copied again and again through the memo) does not."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int, module: str, name: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise UnsafePickleError(
                module, name, f"it would build {self.used:,} items/bytes from a {self.limit:,}-byte pickle"
            )


#: What a lazy argument (a range) or a size would make; only materialized values may be copied.
_MATERIALIZED = (list, tuple, set, frozenset, dict, str, bytes, bytearray)


def _builtin(name: str, budget: _Budget) -> Any:
    """``builtins.<name>`` as a pickle may call it: containers only from values the pickle holds."""
    cls = getattr(__import__("builtins"), name)
    if name in ("range", "slice", "complex"):
        return cls  # small, fixed-size objects (a range is lazy: it is only refused as a source)

    def build(*args: Any) -> Any:
        ok = len(args) <= 1 or (name == "bytearray" and len(args) == 2 and isinstance(args[0], str)
                                and isinstance(args[1], str))  # bytearray(text, "latin-1"): protocol < 3
        if not ok or (args and not isinstance(args[0], _MATERIALIZED)):
            raise UnsafePickleError("builtins", name, "called with arguments no pickle of a plain value has "
                                    f"({', '.join(type(a).__name__ for a in args)})")
        if args:
            budget.charge(len(args[0]), "builtins", name)
        return cls(*args)

    return build


_SAFE_BUILTINS = frozenset({"set", "frozenset", "complex", "range", "slice", "bytearray", "list", "dict", "tuple"})
# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_SAFE_NUMPY = {
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
}
_SAFE_NUMPY_DTYPES_MODULES = ("numpy.dtypes",)


def _refuse_ndarray_call(*args: Any) -> Any:
    raise UnsafePickleError("numpy", "ndarray", "an array is rebuilt from its data, never by calling ndarray")


def _numpy(module: str, name: str, real: Any, budget: _Budget) -> Any:
    """numpy's pickle helpers as a pickle of an array, dtype or scalar calls them, checked."""
    import numpy as np

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError(module, name, why)

    if name == "ndarray":
        return _refuse_ndarray_call  # only passed to _reconstruct, which maps it back
    if name == "dtype":
        def dtype(spec: Any, align: Any = False, copy: Any = False) -> Any:
            if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
                raise refuse("a dtype is pickled as dtype(<type code>, bool, bool)")
            return real(spec, align, copy)
        return dtype
    if name == "_reconstruct":
        def reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
            # numpy pickles every array as an empty one whose data the next BUILD sets
            if subtype is not _refuse_ndarray_call or not isinstance(shape, tuple) or len(shape) != 1 \
                    or shape[0] != 0 or not isinstance(typecode, (bytes, str)) or len(typecode) != 1:
                raise refuse("an array is pickled as _reconstruct(ndarray, (0,), b'b') and then its data")
            return real(np.ndarray, shape, typecode)
        return reconstruct
    if name == "scalar":
        def scalar(dtype: Any, data: Any = None) -> Any:
            if not isinstance(dtype, np.dtype) or dtype.flags & _LIST_PICKLE or not isinstance(data, bytes) \
                    or len(data) != dtype.itemsize:
                raise refuse("a scalar is pickled as scalar(dtype, <itemsize bytes>)")
            budget.charge(len(data), module, name)
            return real(dtype, data)
        return scalar
    if name == "_frombuffer":
        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *rest: Any) -> Any:
            if not isinstance(dtype, np.dtype) or dtype.flags & _LIST_PICKLE:
                raise refuse("an array from a buffer has a plain dtype")
            budget.charge(memoryview(buf).nbytes, module, name)
            return real(buf, dtype, shape, order, *rest)
        return frombuffer
    return real  # numpy.dtypes.*DType classes


#: numpy's NPY_LIST_PICKLE: the dtype holds Python objects, pickled as a list of them.
_LIST_PICKLE = 0x02


class _NeedsNumpyChecks(Exception):
    """Raised by the fast unpickler at the first numpy name: numpy's own ``__setstate__`` trusts
    its input (an object array with fewer items than its shape crashes the interpreter, a
    byte-swapped array copies its data on every use of a memoized buffer), so pickles holding
    numpy values are loaded by an unpickler that checks each array's state before numpy sees it."""


class RestrictedUnpickler(pickle.Unpickler):
    """The fast unpickler for pickles of builtin values; numpy values go to the checked one."""

    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, module, name, numpy_ok=False)


class _CheckedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, with a BUILD that checks an array's state first."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, module, name, numpy_ok=True)

    def _load_build(self) -> None:
        import numpy as np

        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        state, inst = stack[-1], stack[-2]
        if isinstance(inst, np.ndarray):
            _check_array_state(state, self.budget)
        elif not isinstance(inst, np.dtype):
            raise UnsafePickleError(type(inst).__module__, type(inst).__name__, "it has no state to set")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = _load_build  # type: ignore[assignment]


def _check_array_state(state: Any, budget: _Budget) -> None:
    import numpy as np

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError("numpy", "ndarray", why)

    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise refuse("an array's state is (version, shape, dtype, is_fortran, data)")
    shape, dtype, _, raw = state[-4:]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) \
            or not isinstance(dtype, np.dtype):
        raise refuse("an array's shape is a tuple of sizes and its dtype a dtype")
    count = 1
    for n in shape:
        count *= n
    if dtype.flags & _LIST_PICKLE:
        if not isinstance(raw, list) or len(raw) != count:
            raise refuse(f"an array of {count:,} objects needs a list of as many, not {type(raw).__name__}"
                         + (f" of {len(raw):,}" if isinstance(raw, list) else ""))
        budget.charge(len(raw), "numpy", "ndarray")
        return
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dtype.itemsize:
        raise refuse(f"an array of {count:,} x {dtype.itemsize} bytes needs as many bytes of data")
    budget.charge(len(raw), "numpy", "ndarray")


def _find_class(unpickler: RestrictedUnpickler | _CheckedUnpickler, module: str, name: str, *,
                numpy_ok: bool) -> Any:
    if module == "builtins" and name in _SAFE_BUILTINS:
        return _builtin(name, unpickler.budget)
    if name in _SAFE_NUMPY.get(module, ()) or (module in _SAFE_NUMPY_DTYPES_MODULES and name.endswith("DType")):
        # numpy >= 1.25 pickles dtypes by their class, e.g. Float64DType
        if not numpy_ok:
            raise _NeedsNumpyChecks()
        real = pickle._Unpickler.find_class(unpickler, module, name)  # type: ignore[arg-type]
        return _numpy(module, name, real, unpickler.budget)
    raise UnsafePickleError(module, name)


_PICKLABLE = ("only builtin values (dict, list, str, numbers...) and numpy arrays are stored as pickles, "
              "because loading any other class can run its code; store its data instead (e.g. a dict of its fields)")


def pkl_to_bytes(obj: Any) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise SerializationError(f"cannot store a {type(obj).__name__} as a pickle ({e}): {_PICKLABLE}") from None
    # Refuse at store time what every reader would refuse at load time.
    try:
        bytes_to_pkl(data)
    except UnsafePickleError as e:
        what = f"it holds {e.module}.{e.name}" if e.reason is None else f"{e.module}.{e.name}: {e.reason}"
        e.args = (f"cannot store a {type(obj).__name__} as a pickle ({what}): {_PICKLABLE}",)
        raise
    return data


def bytes_to_pkl(data: bytes) -> Any:
    """The value pickled in ``data``, refusing anything but builtin values and numpy arrays,
    dtypes and scalars, and anything that would build more items or bytes than ``data`` holds."""
    try:
        try:
            return RestrictedUnpickler(io.BytesIO(data), _Budget(len(data))).load()
        except _NeedsNumpyChecks:
            return _CheckedUnpickler(io.BytesIO(data), _Budget(len(data))).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        what = what_it_is(data)
        raise SerializationError(f"content is not a pickle: it is {what}" if what != "a pickle"
                                 else f"content is not a valid pickle ({type(e).__name__}: {e})") from None
    except MemoryError:
        # the pickle declares a length (BINBYTES8...) larger than memory; it cannot be a valid one
        raise SerializationError("content is not a valid pickle (it declares more data than memory holds)") from None
