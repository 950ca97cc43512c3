"""Storing a big file in the local store, against named anchors, in one run.

Contenders, each in a process of its own (wall time of the operation itself,
peak RSS growth over the RSS right after imports):

- anchor "hash alone": hashlib sha1 over the file in 4 MiB chunks (the floor
  for storing: the bytes must be hashed at least once);
- anchor (a): ``sha1sum FILE`` and ``cp FILE DEST``, timed each and summed;
- ours: ``kachery_core.store_file_local`` into a fresh KACHERY_CLOUD_DIR, then
  ``load_file`` (hash cached), a second store of the same file (hash cache hit),
  a store of the same bytes from a new path (a hard link: cache miss, content
  already stored), and ``load_file`` with the hash cache cleared;
- anchor (b): kachery-cloud 0.4.10's ``store_file_local`` into a fresh dir, then
  from the new path, run from its own venv ``bench/.venv-kachery-cloud`` (made
  here on first run).

Run: ``.venv/bin/python bench/bench_store_local.py [--size-mib 1024] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _report import fmt, format_table, load_line, save_results

MIB = 2**20
HERE = Path(__file__).resolve().parent
CHILD = HERE / "_child.py"
KC_VERSION = "0.4.10"
KC_VENV = HERE / ".venv-kachery-cloud"

HASH = "hash alone (hashlib sha1, 4 MiB)"
SHA1SUM = "sha1sum FILE"
CP = "cp FILE DEST"
ANCHOR_A = "sha1sum + cp"
OURS_STORE = "ours store_file_local (fresh dir)"
OURS_LOAD = "ours load_file (hash cached)"
OURS_STORE_AGAIN = "ours store_file_local again (cached)"
OURS_STORE_TWIN = "ours store same content, new path"
OURS_LOAD_VERIFY = "ours load_file (hash cache cleared)"
KC_STORE = f"kachery-cloud {KC_VERSION} store_file_local"
KC_STORE_TWIN = f"kachery-cloud {KC_VERSION} same content, new path"
OURS = (OURS_STORE, OURS_LOAD, OURS_STORE_AGAIN, OURS_STORE_TWIN, OURS_LOAD_VERIFY)


@dataclass
class Sample:
    seconds: float
    #: None when it could not be measured.
    rss_growth_kib: int | None
    #: True for external commands: their whole peak RSS, not growth after imports.
    whole_process_rss: bool = False


Samples = dict[str, Sample]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mib", type=int, default=1024, help="size of the random file (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unreported repetitions run first (default 1)")
    p.add_argument("--skip-kachery-cloud", action="store_true", help="leave out anchor (b)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- set-up


def make_random_file(path: Path, size: int) -> None:
    chunk = 16 * MIB
    with open(path, "wb") as f:
        for done in range(0, size, chunk):
            f.write(os.urandom(min(chunk, size - done)))


def kachery_cloud_python() -> Path:
    """The python of a venv holding kachery-cloud 0.4.10, installing it if needed."""
    python = KC_VENV / "bin" / "python"
    if _importable_version(python) == KC_VERSION:
        return python
    print(f"installing kachery-cloud=={KC_VERSION} into {KC_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KC_VENV)], check=True)
    # numpy and pyyaml are imported by kachery-cloud 0.4.10 but not declared by it.
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"kachery-cloud=={KC_VERSION}", "numpy", "pyyaml"], check=True)
    if _importable_version(python) != KC_VERSION:
        raise RuntimeError(f"kachery-cloud {KC_VERSION} does not import in {KC_VENV}")
    return python


def _importable_version(python: Path) -> str | None:
    """kachery-cloud's version if it imports in ``python``, else None."""
    if not python.exists():
        return None
    code = "import importlib.metadata as m, kachery_cloud; print(m.version('kachery-cloud'))"
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        env = {**os.environ, "KACHERY_CLOUD_DIR": d}  # importing it creates the dir
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    return r.stdout.strip() if r.returncode == 0 else None


# ---------------------------------------------------------------- measuring


def equalize_page_cache(path: Path) -> None:
    """Source file fully cached, and no writeback of earlier copies pending."""
    buf = bytearray(4 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    os.sync()


def run_external(cmd: list[str], source: Path, work: Path) -> tuple[Sample, str]:
    """Time a command; returns its sample and its standard output.

    Its peak RSS is measured by GNU time when installed: ``wait4`` on a child of
    this process would report at least this process's own peak, since a forked
    or vforked child starts from its parent's high-water mark.
    """
    equalize_page_cache(source)
    out_path, rss_path = work / "external.out", work / "external.rss"
    gnu_time = shutil.which("time")
    wrapped = [gnu_time, "-f", "%M", "-o", str(rss_path), *cmd] if gnu_time else cmd
    with open(out_path, "w") as out:
        start = time.perf_counter()
        r = subprocess.run(wrapped, stdout=out, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode}): {r.stderr}")
    rss_kib = int(rss_path.read_text().split()[-1]) if gnu_time else None
    return Sample(seconds, rss_kib, whole_process_rss=True), out_path.read_text()


def run_child(
    python: Path, op: str, arg: str, kachery_dir: Path, source: Path, work: Path
) -> tuple[Sample, str]:
    """Run one operation of ``_child.py`` with its own KACHERY_CLOUD_DIR."""
    equalize_page_cache(source)
    result_path = work / "child-result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "KACHERY_CLOUD_DIR": str(kachery_dir)}
    cmd = [str(python), str(CHILD), op, arg, str(result_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{op} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    result = json.loads(result_path.read_text())
    return Sample(result["seconds"], result["peak_rss_growth_kib"]), str(result["value"])


def _max_or_none(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if len(known) == len(values) else None


def sha1_of_uri(uri: str) -> str:
    return uri.removeprefix("sha1://").split("?")[0]


@dataclass
class Bench:
    """One repetition's worth of contenders on ``source`` (``twin`` is a hard link to it)."""

    source: Path
    twin: Path
    work: Path
    kc_python: Path | None
    samples: Samples = field(default_factory=dict)
    hashes: set[str] = field(default_factory=set)

    def child(self, name: str, python: Path, op: str, arg: Path | str, kachery_dir: Path) -> str:
        self.samples[name], value = run_child(python, op, str(arg), kachery_dir, self.source, self.work)
        return value

    def external(self, name: str, cmd: list[str]) -> str:
        self.samples[name], out = run_external(cmd, self.source, self.work)
        return out

    def anchors(self) -> None:
        unused_dir = self.work / "unused"  # the hash child never touches a kachery dir
        self.hashes.add(self.child(HASH, Path(sys.executable), "hash", self.source, unused_dir))
        self.hashes.add(self.external(SHA1SUM, ["sha1sum", str(self.source)]).split()[0])
        dest = self.work / "cp-dest"
        self.external(CP, ["cp", str(self.source), str(dest)])
        dest.unlink()
        a, b = self.samples[SHA1SUM], self.samples[CP]
        rss = _max_or_none([a.rss_growth_kib, b.rss_growth_kib])
        self.samples[ANCHOR_A] = Sample(a.seconds + b.seconds, rss, whole_process_rss=True)

    def ours(self) -> None:
        python, d = Path(sys.executable), self.work / "kachery-ours"
        uri = self.child(OURS_STORE, python, "ours-store", self.source, d)
        self.child(OURS_LOAD, python, "ours-load", uri, d)
        self.child(OURS_STORE_AGAIN, python, "ours-store", self.source, d)
        twin_uri = self.child(OURS_STORE_TWIN, python, "ours-store", self.twin, d)
        self.hashes.update({sha1_of_uri(uri), sha1_of_uri(twin_uri)})
        shutil.rmtree(d / "mutables" / "@compute_sha1_cache")
        self.child(OURS_LOAD_VERIFY, python, "ours-load", uri, d)
        shutil.rmtree(d)

    def kachery_cloud(self) -> None:
        if self.kc_python is None:
            return
        d = self.work / "kachery-cloud"
        for name, path in ((KC_STORE, self.source), (KC_STORE_TWIN, self.twin)):
            uri = self.child(name, self.kc_python, "kachery-cloud-store", path, d)
            self.hashes.add(sha1_of_uri(uri))
        shutil.rmtree(d)


def one_repetition(source: Path, twin: Path, work: Path, kc_python: Path | None) -> Samples:
    """Every contender once, after checking they all found the same sha1."""
    bench = Bench(source, twin, work, kc_python)
    bench.anchors()
    bench.ours()
    bench.kachery_cloud()
    if len(bench.hashes) != 1:
        raise RuntimeError(f"contenders disagree on the sha1: {sorted(bench.hashes)}")
    return bench.samples


# ---------------------------------------------------------------- reporting


@dataclass
class Summary:
    name: str
    seconds: float
    mib_per_s: float
    rss_growth_mib: float | None
    whole_process_rss: bool


def summarize(reps: list[Samples], size_mib: float) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in reps[0]:
        runs = [r[name] for r in reps]
        seconds = statistics.median(s.seconds for s in runs)
        out[name] = Summary(
            name=name,
            seconds=seconds,
            mib_per_s=size_mib / seconds,
            rss_growth_mib=_kib_to_mib(_max_or_none([s.rss_growth_kib for s in runs])),
            whole_process_rss=runs[0].whole_process_rss,
        )
    return out


def _kib_to_mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def table(summary: dict[str, Summary]) -> str:
    hash_s = summary[HASH].seconds
    anchor_s = summary[ANCHOR_A].seconds
    rows = [
        [
            s.name,
            f"{s.seconds:.3f}",
            f"{s.mib_per_s:,.0f}",
            fmt(s.rss_growth_mib, ".1f") + ("*" if s.whole_process_rss else ""),
            f"{s.seconds / hash_s:.2f}",
            f"{s.seconds / anchor_s:.2f}",
        ]
        for s in summary.values()
    ]
    headers = ["contender", "median s", "MiB/s", "peak RSS growth MiB", "/ hash alone", "/ sha1sum+cp"]
    return format_table(headers, rows)


def aims(summary: dict[str, Summary]) -> list[str]:
    store = summary[OURS_STORE].seconds
    lines = [f"store_file_local / hash alone = {store / summary[HASH].seconds:.2f} (aim <= 1.15)"]
    if KC_STORE in summary:
        ratio = summary[KC_STORE].seconds / store
        lines.append(f"kachery-cloud {KC_VERSION} / ours = {ratio:.2f} (aim >= 1.3)")
    else:
        lines.append(f"kachery-cloud {KC_VERSION} / ours = - (anchor skipped; aim >= 1.3)")
    worst = max((summary[n] for n in OURS), key=lambda s: s.rss_growth_mib or 0.0)
    growth = fmt(worst.rss_growth_mib, ".1f")
    lines.append(f"peak RSS growth = {growth} MiB, worst of ours: {worst.name} (aim < 64)")
    return lines


def run_all(args: argparse.Namespace, kc_python: Path | None) -> list[Samples]:
    """Warm-up and measured repetitions in a temp folder removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="kachery-bench-store-", dir=os.environ.get("BENCH_TMP")))
    try:
        source, twin = work / "random.bin", work / "twin.bin"
        print(f"making {args.size_mib} MiB of random bytes in {source} ...", flush=True)
        make_random_file(source, args.size_mib * MIB)
        os.link(source, twin)  # same bytes at a path the hash cache has never seen
        reps: list[Samples] = []
        for i in range(args.warmup + args.repeat):
            samples = one_repetition(source, twin, work, kc_python)
            kind = "warm-up" if i < args.warmup else f"repetition {i - args.warmup + 1}/{args.repeat}"
            times = ", ".join(f"{n} {s.seconds:.3f}s" for n, s in samples.items())
            print(f"{kind}: {times}", flush=True)
            if i >= args.warmup:
                reps.append(samples)
        return reps
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"before: {load_line()}")
    kc_python = None if args.skip_kachery_cloud else kachery_cloud_python()
    reps = run_all(args, kc_python)
    summary = summarize(reps, args.size_mib)
    print(
        f"\nstore a {args.size_mib} MiB file of random bytes: median of {args.repeat} "
        f"(after {args.warmup} warm-up), page cache warm and os.sync() before each"
    )
    print(table(summary))
    print("* whole-process peak RSS of the external command (GNU time %M), not growth after imports")
    aim_lines = aims(summary)
    print("\n" + "\n".join(aim_lines))
    save_results(
        "store_local",
        {
            "size_mib": args.size_mib,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "summary": {n: vars(s) for n, s in summary.items()},
            "repetitions": [{n: vars(s) for n, s in r.items()} for r in reps],
            "aims": aim_lines,
        },
    )


if __name__ == "__main__":
    main()
