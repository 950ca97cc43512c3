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
import math
import pickle
import re
import struct
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


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
# CPython's C encoder called directly: half the time of json.dumps on small objects, which matters for
# feeds (every message of a batch is encoded by the client and again by the hub). Without the circular
# reference check: a cycle ends in RecursionError instead of ValueError.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_CANONICAL = (
    _c_make_encoder(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, False)
    if _c_make_encoder is not None else None
)


def canonical_json(obj: Any) -> str:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)``, faster.

    Raises TypeError (not JSON), ValueError (NaN, Infinity) or RecursionError (too deep, or a cycle).
    """
    if _C_CANONICAL is None or not isinstance(obj, (dict, list)):
        return _CANONICAL.encode(obj)
    return "".join(_C_CANONICAL(obj, 0))


def find_json_problem(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """Where ``value`` is not JSON, and why (None: it is)."""
    if depth > 500:
        return path, "nested too deeply"
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value!r} is not a JSON number")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{path}[{k!r}]", f"a key of type {type(k).__name__} (JSON keys are strings)"
            found = find_json_problem(v, f"{path}[{k!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_json_problem(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    return path, f"a {type(value).__module__}.{type(value).__qualname__} is not a JSON value"


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

#: numpy's dtype flags: NPY_ITEM_REFCOUNT (items are Python objects), NPY_LIST_PICKLE (pickled as a
#: list of them), NPY_ALIGNED_STRUCT (a structured dtype made with ``align=True``).
_HAS_OBJECTS, _LIST_PICKLE, _ALIGNED_STRUCT = 0x01, 0x02, 0x80
#: What numpy passes to ``dtype()`` when it pickles one: a type code and a size ("f8", "U3", "V12", "M8").
_DTYPE_SPEC = re.compile(r"[A-Za-z]\d{0,12}")


def _refuse_ndarray_call(*args: Any) -> Any:
    raise UnsafePickleError("numpy", "ndarray", "an array is rebuilt from its data, never by calling ndarray")


def _plain_dtype(dtype: Any, unpickler: _CheckedUnpickler) -> bool:
    """A dtype whose items are bytes only (no Python objects anywhere in it), ready for use."""
    import numpy as np

    return (isinstance(dtype, np.dtype) and unpickler.ready(dtype) and not dtype.hasobject
            and not dtype.flags & (_HAS_OBJECTS | _LIST_PICKLE) and dtype.kind != "O")


def _numpy(module: str, name: str, real: Any, unpickler: _CheckedUnpickler) -> Any:
    """numpy's pickle helpers as a pickle of an array, dtype or scalar calls them, checked."""
    import numpy as np

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError(module, name, why)

    if name == "ndarray":
        return _refuse_ndarray_call  # only passed to _reconstruct, which maps it back
    if name == "dtype":
        def dtype(spec: Any, align: Any = False, copy: Any = False) -> Any:
            # numpy pickles a dtype as a fresh copy of a plain one, then sets its state (BUILD): a copy,
            # because a BUILD on numpy's shared dtype("f8") would change it for the whole process
            if type(spec) is not str or not _DTYPE_SPEC.fullmatch(spec) or type(align) not in (bool, int) \
                    or align != 0 or type(copy) not in (bool, int) or copy != 1:
                raise refuse("a dtype is pickled as dtype(<type code and size>, False, True)")
            try:
                made = real(spec, False, True)
            except (TypeError, ValueError) as e:
                raise refuse(f"{spec!r} is not a type code numpy pickles ({e})") from None
            if made.names is not None or made.subdtype is not None or made.metadata is not None:
                raise refuse(f"{spec!r} is not a type code numpy pickles")
            unpickler.unbuilt[id(made)] = made
            return made
        return dtype
    if name == "_reconstruct":
        def reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
            # numpy pickles every array as an empty one whose data the next BUILD sets
            if subtype is not _refuse_ndarray_call or type(shape) is not tuple or len(shape) != 1 \
                    or type(shape[0]) is not int or shape[0] != 0 or type(typecode) not in (bytes, str) \
                    or typecode not in (b"b", "b"):
                raise refuse("an array is pickled as _reconstruct(ndarray, (0,), b'b') and then its data")
            made = real(np.ndarray, (0,), typecode)
            unpickler.unbuilt[id(made)] = made
            return made
        return reconstruct
    if name == "scalar":
        def scalar(dtype: Any, data: Any = None) -> Any:
            # an object scalar from bytes would take them for pointers: numpy never pickles one
            if not _plain_dtype(dtype, unpickler) or type(data) is not bytes or len(data) != dtype.itemsize:
                raise refuse("a scalar is pickled as scalar(<dtype without objects>, <itemsize bytes>)")
            unpickler.budget.charge(len(data), module, name)
            return real(dtype, data)
        return scalar
    if name == "_frombuffer":
        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *rest: Any) -> Any:
            if type(buf) not in (bytes, bytearray) or not _plain_dtype(dtype, unpickler) or len(rest) > 1:
                raise refuse("an array from a buffer is _frombuffer(<bytes>, <dtype without objects>, shape, order)")
            unpickler.budget.charge(len(buf), module, name)
            return real(buf, dtype, shape, order, *rest)
        return frombuffer
    return real  # numpy.dtypes.*DType classes: called, they give numpy's own plain dtypes


#: Names in a pickle that make the fast unpickler give way to the checked one (see _find_class);
#: only a shortcut: a pickle without them that still needs checks is caught by _NeedsChecks.
_NEEDS_CHECKS_HINT = (b"numpy", b"slice")


class _NeedsChecks(Exception):
    """Raised by the fast unpickler at the first name it cannot load safely itself: numpy's own
    ``__setstate__`` trusts its input (an object array with fewer items than its shape, or a dtype
    whose state says it holds no objects, crashes the interpreter; a byte-swapped array copies its
    data on every use of a memoized buffer), and ``a_list[a_slice] = a_range`` materializes the
    range. Such pickles are loaded by an unpickler that checks each of these steps first."""


class RestrictedUnpickler(pickle.Unpickler):
    """The fast unpickler for pickles of builtin values; numpy values go to the checked one."""

    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, module, name)


class _CheckedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, with a BUILD that checks an array's or a dtype's state first
    and item assignment only into dicts (the only target a pickle of a plain value has)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self.budget = budget
        #: arrays and dtypes made by _reconstruct / dtype() whose state (BUILD) is not set yet, by id;
        #: each gets one BUILD, and none is used before it (numpy pickles never do either)
        self.unbuilt: dict[int, Any] = {}

    def ready(self, obj: Any) -> bool:
        return self.unbuilt.get(id(obj)) is not obj

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, module, name)

    def _load_build(self) -> None:
        import numpy as np

        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        state, inst = stack[-1], stack[-2]
        if not isinstance(inst, (np.ndarray, np.dtype)):
            raise UnsafePickleError(type(inst).__module__, type(inst).__name__, "it has no state to set")
        what = "ndarray" if isinstance(inst, np.ndarray) else "dtype"
        if self.ready(inst):
            raise UnsafePickleError("numpy", what, f"a {what}'s state is set once, right after it is made")
        if isinstance(inst, np.ndarray):
            _check_array_state(state, self)
            del self.unbuilt[id(inst)]
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            return
        # checked while ``inst`` is still unbuilt, so that its state cannot name it as its own field
        expected = _dtype_from_state(inst.__reduce__()[1][0], state, self)
        del self.unbuilt[id(inst)]
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        if inst.__reduce__()[1:] != expected.__reduce__()[1:] or inst.flags != expected.flags \
                or inst.itemsize != expected.itemsize or inst.alignment != expected.alignment:
            raise UnsafePickleError("numpy", "dtype", "its state does not give the dtype it describes")

    def _load_setitem(self) -> None:
        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        if len(stack) >= 3 and type(stack[-3]) is not dict:
            raise _refuse_setitem(stack[-3])
        pickle._Unpickler.load_setitem(self)  # type: ignore[attr-defined]

    def _load_setitems(self) -> None:
        metastack: list[list[Any]] = self.metastack  # type: ignore[attr-defined]
        if metastack and metastack[-1] and type(metastack[-1][-1]) is not dict:
            raise _refuse_setitem(metastack[-1][-1])
        pickle._Unpickler.load_setitems(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = _load_build  # type: ignore[assignment]
    dispatch[pickle.SETITEM[0]] = _load_setitem  # type: ignore[assignment]
    dispatch[pickle.SETITEMS[0]] = _load_setitems  # type: ignore[assignment]


def _refuse_setitem(target: Any) -> UnsafePickleError:
    return UnsafePickleError(type(target).__module__, type(target).__name__,
                             "a pickle sets items only in a dict (x[a_slice] = a_range would build the range)")


def _dtype_from_state(spec: str, state: Any, unpickler: _CheckedUnpickler) -> Any:
    """The dtype that ``state`` describes, built by numpy from that description (so numpy checks it:
    fields inside the itemsize, whole characters...), if a dtype pickled as ``dtype(spec, False, True)``
    pickles exactly this state; refused otherwise, and refused if Python objects would sit inside a
    structured or subarray dtype (numpy keeps them there as raw pointers among the bytes)."""
    import numpy as np

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError("numpy", "dtype", why)

    def field_dtype(dt: Any) -> Any:
        if not isinstance(dt, np.dtype) or not unpickler.ready(dt):
            raise refuse("a field or subarray of a dtype is a dtype")
        if dt.hasobject or dt.flags & (_HAS_OBJECTS | _LIST_PICKLE) or dt.kind == "O":
            raise refuse("Python objects in a structured or subarray dtype are not loaded (only plain object arrays)")
        return dt

    if type(state) is not tuple or len(state) not in (8, 9) or type(state[1]) is not str \
            or any(type(n) is not int for n in (state[0], *state[5:8])):
        raise refuse("a dtype's state is (version, byte order, subarray, names, fields, itemsize, alignment, flags)")
    order, sub, names, fields, itemsize, flags = state[1:6] + (state[7],)
    try:
        if sub is not None:
            if type(sub) is not tuple or len(sub) != 2 or type(sub[1]) is not tuple \
                    or not all(type(n) is int and n >= 0 for n in sub[1]):
                raise refuse("a subarray dtype's state holds (dtype, shape)")
            expected = np.dtype((field_dtype(sub[0]), sub[1]))
        elif names is not None or fields is not None:
            if type(names) is not tuple or type(fields) is not dict or not all(type(n) is str for n in names):
                raise refuse("a structured dtype's state holds its names and a dict of its fields")
            # one fields dict reused through the memo by many dtypes is as much work as that many
            unpickler.budget.charge(len(fields), "numpy", "dtype")
            formats, offsets, titles = [], [], []
            for n in names:
                f = fields.get(n)
                if type(f) is not tuple or len(f) not in (2, 3) or type(f[1]) is not int \
                        or (len(f) == 3 and type(f[2]) is not str):
                    raise refuse(f"field {n!r} of a structured dtype is (dtype, offset[, title])")
                formats.append(field_dtype(f[0]))
                offsets.append(f[1])
                titles.append(f[2] if len(f) == 3 else None)
            description: Any = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": itemsize}
            if any(t is not None for t in titles):
                description["titles"] = titles
            expected = np.dtype(description, align=bool(flags & _ALIGNED_STRUCT))
        else:
            if order not in ("<", ">", "|"):
                raise refuse(f"a dtype's byte order is '<', '>' or '|', not {order!r}")
            expected = np.dtype(spec) if order == "|" else np.dtype(spec).newbyteorder(order)
            if len(state) == 9:  # datetime64/timedelta64: (None, (unit, count, 1, 1))
                meta = state[8]
                if expected.kind not in "mM" or type(meta) is not tuple or len(meta) != 2 or meta[0] is not None \
                        or type(meta[1]) is not tuple or len(meta[1]) != 4 or type(meta[1][0]) is not bytes \
                        or not meta[1][0].isalpha() or not all(type(n) is int and n > 0 for n in meta[1][1:]):
                    raise refuse("a dtype's metadata is only a datetime unit")
                unit = meta[1][0].decode("ascii")
                if unit != "generic":
                    expected = np.dtype(f"{expected.str}[{meta[1][1]}{unit}]")
    except UnsafePickleError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise refuse(f"numpy refuses the dtype its state describes ({e})") from None
    if expected.__reduce__()[1:] != ((spec, False, True), state):
        raise refuse("its state is not the one numpy pickles that dtype with (flags, itemsize, byte order...)")
    return expected


def _check_array_state(state: Any, unpickler: _CheckedUnpickler) -> None:
    import numpy as np

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError("numpy", "ndarray", why)

    if not isinstance(state, tuple) or len(state) not in (4, 5) \
            or (len(state) == 5 and (type(state[0]) is not int or state[0] != 1)):
        raise refuse("an array's state is (1, shape, dtype, is_fortran, data)")
    shape, dtype, fortran, raw = state[-4:]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) \
            or not isinstance(dtype, np.dtype) or type(fortran) is not bool:
        raise refuse("an array's shape is a tuple of sizes, its dtype a dtype and is_fortran a bool")
    if not unpickler.ready(dtype):
        raise refuse("an array's dtype is used before its own state is set")
    count = 1
    for n in shape:
        count *= n
    if _plain_dtype(dtype, unpickler):
        if type(raw) not in (bytes, bytearray) or len(raw) != count * dtype.itemsize:
            raise refuse(f"an array of {count:,} x {dtype.itemsize} bytes needs as many bytes of data")
        # items, not only bytes: 10**12 items of a zero-size dtype come from no data at all
        unpickler.budget.charge(max(len(raw), count), "numpy", "ndarray")
        return
    # Python objects: only in a plain object array, and only as a list of values the pickle made
    # (bytes would be taken for pointers to them)
    if dtype.kind != "O" or dtype.names is not None or dtype.subdtype is not None:
        raise refuse("Python objects in a structured or subarray dtype are not loaded (only plain object arrays)")
    if type(raw) is not list or len(raw) != count:
        raise refuse(f"an array of {count:,} objects needs a list of as many, not {type(raw).__name__}"
                     + (f" of {len(raw):,}" if isinstance(raw, list) else ""))
    unpickler.budget.charge(len(raw), "numpy", "ndarray")


def _find_class(unpickler: RestrictedUnpickler | _CheckedUnpickler, module: str, name: str) -> Any:
    checked = isinstance(unpickler, _CheckedUnpickler)
    if module == "builtins" and name in _SAFE_BUILTINS:
        if name == "slice" and not checked:
            raise _NeedsChecks()  # item assignment with a slice is checked there
        return _builtin(name, unpickler.budget)
    if name in _SAFE_NUMPY.get(module, ()) or (module in _SAFE_NUMPY_DTYPES_MODULES and name.endswith("DType")):
        # numpy >= 1.25 pickles dtypes by their class, e.g. Float64DType
        if not checked:
            raise _NeedsChecks()
        real = pickle._Unpickler.find_class(unpickler, module, name)  # type: ignore[arg-type]
        return _numpy(module, name, real, unpickler)  # type: ignore[arg-type]
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
        if any(name in data for name in _NEEDS_CHECKS_HINT):
            # a pickle naming numpy (or slice) is loaded by the checked unpickler from the start: the
            # fast one would stop at that name and the work it did before it would be lost
            return _CheckedUnpickler(io.BytesIO(data), _Budget(len(data))).load()
        try:
            return RestrictedUnpickler(io.BytesIO(data), _Budget(len(data))).load()
        except _NeedsChecks:  # a name the hint missed; the fast unpickler refuses to go on without checks
            return _CheckedUnpickler(io.BytesIO(data), _Budget(len(data))).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            SystemError, struct.error, OverflowError, RecursionError) as e:
        # SystemError: numpy making a str scalar of code points past U+10FFFF; struct.error and
        # OverflowError: the pure-Python unpickler reading a truncated or oversized length
        what = what_it_is(data)
        raise SerializationError(f"content is not a pickle: it is {what}" if what != "a pickle"
                                 else f"content is not a valid pickle ({type(e).__name__}: {e})") from None
    except MemoryError:
        # the pickle declares a length (BINBYTES8...) larger than memory; it cannot be a valid one
        raise SerializationError("content is not a valid pickle (it declares more data than memory holds)") from None
