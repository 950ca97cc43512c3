"""One measured operation in a process of its own, so its peak memory is its own.

Usage: ``python _child.py OP ARG RESULT_JSON``. The operation's imports happen
first; then the peak RSS is reset and the operation timed. The result (seconds,
RSS right after imports, peak RSS growth, returned value) goes to RESULT_JSON,
not stdout, because some contenders print on stdout.

Standard library only: it also runs under the kachery-cloud 0.4.10 venv.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any, Callable

CHUNK_SIZE = 4 * 1024 * 1024

Operation = Callable[[str], str]


def _hash_alone(path: str) -> str:
    h = hashlib.sha1()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _ours(name: str) -> Operation:
    import kachery_core

    if name == "store":
        return lambda path: kachery_core.store_file_local(path)
    if name == "load":
        return lambda uri: kachery_core.load_file(uri)
    raise ValueError(name)


def _kachery_cloud_store() -> Operation:
    import kachery_cloud  # type: ignore[import-not-found]

    return lambda path: str(kachery_cloud.store_file_local(path))


def prepare(op: str) -> Operation:
    """Import what ``op`` needs and return it ready to call."""
    if op == "hash":
        return _hash_alone
    if op in ("ours-store", "ours-load"):
        return _ours(op.removeprefix("ours-"))
    if op == "kachery-cloud-store":
        return _kachery_cloud_store()
    raise SystemExit(f"unknown operation {op!r}")


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_role(roles: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], argv: list[str]) -> None:
    """``argv`` = [program, ROLE, ARGS_JSON, RESULT_JSON]: ``roles[ROLE](ARGS)`` written to RESULT_JSON
    (the child processes of the hub benchmarks)."""
    role, args, result_path = argv[1], json.loads(argv[2]), argv[3]
    result = roles[role](args)
    with open(result_path, "w") as f:
        json.dump(result, f)


def main(argv: list[str]) -> None:
    op, arg, result_path = argv[1:4]
    operation = prepare(op)
    peak_was_reset = reset_peak_rss()
    rss_after_imports = status_kib("VmRSS")
    start = time.perf_counter()
    value = operation(arg)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    result = {
        "op": op,
        "seconds": seconds,
        "rss_after_imports_kib": rss_after_imports,
        "peak_rss_kib": peak,
        "peak_rss_growth_kib": max(0, peak - rss_after_imports),
        "peak_was_reset": peak_was_reset,
        "value": value,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
