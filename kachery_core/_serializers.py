"""Deterministic bytes for Python objects: the same object gives the same URI everywhere.

- text: UTF-8
- JSON: sorted keys, separators ``(',', ':')``, ASCII escapes, NaN/Infinity refused
- npy: ``numpy.save`` with ``allow_pickle=False``
- pkl: pickle protocol 4; loaded only through an unpickler that allows
  builtin containers and numpy arrays/scalars
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from .errors import SerializationError, UnsafePickleError

PICKLE_PROTOCOL = 4  # fixed so that Python upgrades do not change URIs


def text_to_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise SerializationError(f"store_text expects a str, got {type(text).__name__}")
    return text.encode("utf-8")


def bytes_to_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SerializationError(f"content is not UTF-8 text ({e})") from None


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
        raise SerializationError(f"content is not JSON ({e})") from None


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
        raise SerializationError(f"content is not a loadable npy array ({e})") from None


_SAFE_BUILTINS = frozenset(
    {"set", "frozenset", "complex", "range", "slice", "bytearray", "list", "dict", "tuple"}
)
# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_SAFE_NUMPY = {
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
}
_SAFE_NUMPY_DTYPES_MODULES = ("numpy.dtypes",)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (module == "builtins" and name in _SAFE_BUILTINS) or name in _SAFE_NUMPY.get(module, ())
        if module in _SAFE_NUMPY_DTYPES_MODULES and name.endswith("DType"):
            allowed = True  # numpy >= 1.25 pickles dtypes by their class, e.g. Float64DType
        if not allowed:
            raise UnsafePickleError(module, name)
        return super().find_class(module, name)


def pkl_to_bytes(obj: Any) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {e}") from None
    # Refuse at store time what every reader would refuse at load time.
    bytes_to_pkl(data)
    return data


def bytes_to_pkl(data: bytes) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise SerializationError(f"content is not a valid pickle ({e})") from None
