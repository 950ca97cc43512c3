"""What ``import kachery_core`` costs a fresh interpreter, against ``pass``.

Runs ``python -c "import kachery_core"`` and ``python -c "pass"`` alternately
(same interpreter, so noise hits both alike), prints both medians and their
difference, then the modules with the largest cumulative time from
``python -X importtime -c "import kachery_core"``.

Run: ``.venv/bin/python bench/bench_import.py [--runs 20] [--python PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from _report import format_table, load_line, save_results

MODULE = "kachery_core"
AIM_MS = 100.0


@dataclass
class ImportTime:
    module: str
    self_us: int
    cumulative_us: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    p.add_argument("--top", type=int, default=10, help="modules to list from -X importtime (default 10)")
    p.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    return p.parse_args(argv)


def wall_seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(python: str, runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``pass`` and of the import, interleaved, after one warm-up each."""
    baseline_cmd = [python, "-c", "pass"]
    import_cmd = [python, "-c", f"import {MODULE}"]
    wall_seconds(baseline_cmd)
    wall_seconds(import_cmd)  # warms the page cache and writes the .pyc files
    baseline: list[float] = []
    imported: list[float] = []
    for _ in range(runs):
        baseline.append(wall_seconds(baseline_cmd))
        imported.append(wall_seconds(import_cmd))
    return baseline, imported


def import_times(python: str) -> list[ImportTime]:
    """Parse ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    cmd = [python, "-X", "importtime", "-c", f"import {MODULE}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out: list[ImportTime] = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) != 3 or not fields[0].isdigit():
            continue  # the header line
        out.append(ImportTime(module=fields[2].strip(), self_us=int(fields[0]), cumulative_us=int(fields[1])))
    return out


def _ms_row(label: str, seconds: list[float]) -> list[str]:
    return [label, *(f"{f(seconds) * 1000:.1f}" for f in (statistics.median, min, max))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    baseline, imported = measure(args.python, args.runs)
    base_ms = statistics.median(baseline) * 1000
    import_ms = statistics.median(imported) * 1000
    diff_ms = import_ms - base_ms

    print(f"interpreter: {args.python}; median of {args.runs} runs each, interleaved")
    rows = [_ms_row('python -c "pass"', baseline), _ms_row(f'python -c "import {MODULE}"', imported)]
    print(format_table(["command", "median ms", "min ms", "max ms"], rows))
    aim = f"import {MODULE} costs {diff_ms:.1f} ms over a bare interpreter (aim < {AIM_MS:.0f} ms)"
    print(f"\n{aim}\n")

    top = sorted(import_times(args.python), key=lambda t: t.cumulative_us, reverse=True)[: args.top]
    print(f'python -X importtime -c "import {MODULE}": top {args.top} by cumulative time')
    rows = [[t.module, f"{t.cumulative_us / 1000:.1f}", f"{t.self_us / 1000:.1f}"] for t in top]
    print(format_table(["module", "cumulative ms", "self ms"], rows))
    save_results(
        "import",
        {
            "python": args.python,
            "runs": args.runs,
            "pass_ms": [s * 1000 for s in baseline],
            "import_ms": [s * 1000 for s in imported],
            "median_pass_ms": base_ms,
            "median_import_ms": import_ms,
            "difference_ms": diff_ms,
            "aim": aim,
            "importtime_top": [vars(t) for t in top],
        },
    )


if __name__ == "__main__":
    main()
