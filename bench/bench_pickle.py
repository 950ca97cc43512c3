"""Loading pickles through the restricted unpickler, against ``pickle.loads``.

Two pickles that name numpy, so that the checked (pure-Python) unpickler reads
them: a dict of 200,000 ints plus one small array, and a list of 20,000 small
arrays; and, for reference, the same dict without the array (read by the fast C
unpickler). Each is loaded by ``pickle.loads`` (the anchor: no checks at all),
by ``kachery_core``'s ``bytes_to_pkl``, and by the way it read them before the
checked unpickler was chosen up front (the C unpickler until the first numpy
name, then everything again). Medians of ``--repeat`` runs, interleaved.

Run: ``.venv/bin/python bench/bench_pickle.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import time
from typing import Any, Callable

from _report import fmt, format_table, load_line, save_results

from kachery_core import _serializers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7, help="measured runs of each (default 7; medians reported)")
    return p.parse_args(argv)


def cases() -> dict[str, Any]:
    import numpy as np

    ints = {f"k{i}": i for i in range(200_000)}
    return {
        "dict of 200k ints + one array": {**ints, "array": np.arange(10)},
        "20k small arrays": [np.arange(4, dtype=np.float64) + i for i in range(20_000)],
        "dict of 200k ints (no numpy)": ints,
    }


def two_passes(data: bytes) -> Any:
    """The earlier way: the fast unpickler first, the checked one again from the start at a numpy name."""
    budget = _serializers._Budget
    try:
        return _serializers.RestrictedUnpickler(io.BytesIO(data), budget(len(data))).load()
    except _serializers._NeedsChecks:
        return _serializers._CheckedUnpickler(io.BytesIO(data), budget(len(data))).load()


def seconds(fn: Callable[[bytes], Any], data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    contenders: dict[str, Callable[[bytes], Any]] = {
        "pickle.loads": pickle.loads, "bytes_to_pkl": _serializers.bytes_to_pkl, "two passes (before)": two_passes,
    }
    rows, figures = [], {}
    for name, obj in cases().items():
        data = pickle.dumps(obj, protocol=_serializers.PICKLE_PROTOCOL)
        times: dict[str, list[float]] = {c: [] for c in contenders}
        for fn in contenders.values():
            fn(data)  # warm-up
        for _ in range(args.repeat):
            for c, fn in contenders.items():
                times[c].append(seconds(fn, data))
        med = {c: statistics.median(t) for c, t in times.items()}
        figures[name] = {"bytes": len(data), "median_seconds": med}
        rows.append([name, f"{len(data) / 2**20:.1f}", *(fmt(med[c] * 1000, ".1f") for c in contenders),
                     fmt(med["bytes_to_pkl"] / med["pickle.loads"], ".1f") + "x",
                     fmt(med["two passes (before)"] / med["bytes_to_pkl"], ".2f") + "x"])
    print(format_table(["pickle", "MiB", "pickle.loads ms", "bytes_to_pkl ms", "two passes ms",
                        "ours / loads", "before / ours"], rows))
    save_results("bench_pickle", {"repeat": args.repeat, "cases": figures})


if __name__ == "__main__":
    main()
