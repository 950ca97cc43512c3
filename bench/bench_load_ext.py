"""What ``%load_ext kachery_jupyter`` costs inside a running IPython, against ``%load_ext autoreload``.

Each run is a fresh interpreter that starts an IPython shell, then times one
``%load_ext`` (the import, the magics, and the one-line status, which asks the
hub where this client stands). Three cases: no hub configured, a signed-in
client of a real local ``kachery-hub serve`` process, and the anchor
``autoreload`` (an extension that ships with IPython). Aim: well under 0.5 s.

Run: ``.venv/bin/python bench/bench_load_ext.py [--runs 15]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AIM_S = 0.5
CHILD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t = time.perf_counter()
shell.run_line_magic("load_ext", sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t}), file=sys.stderr)
"""


def once(extension: str, env: dict[str, str]) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, extension], env=env, capture_output=True, text=True, check=True)
    seconds = float(json.loads(out.stderr.strip().splitlines()[-1])["seconds"])
    return seconds, out.stdout.strip()


def start_hub(root: Path) -> tuple[subprocess.Popen[str], str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub_cli = str(Path(sys.executable).parent / "kachery-hub")
    proc = subprocess.Popen([hub_cli, "serve", "--data", str(root / "hub"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"KACHERY_HUB_URL=(\S+) KACHERY_HUB_TOKEN=(\S+)", proc.stdout.readline())
        if m:
            return proc, m.group(1), m.group(2)
    proc.kill()
    raise SystemExit("the hub did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-load-ext-"))
    hub, url, token = start_hub(root)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
        no_hub = {**base, "KACHERY_CLOUD_DIR": str(root / "no-hub")}
        signed = {**base, "KACHERY_CLOUD_DIR": str(root / "signed"), "KACHERY_HUB_URL": url}
        subprocess.run([sys.executable, "-c", f"import kachery_core as kc; kc.init(hub_url={url!r}, token={token!r})"],
                       env=signed, check=True)
        cases = {
            "%load_ext autoreload (anchor)": ("autoreload", no_hub),
            "%load_ext kachery_jupyter, no hub": ("kachery_jupyter", no_hub),
            "%load_ext kachery_jupyter, signed in to a local hub": ("kachery_jupyter", signed),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        status: dict[str, str] = {}
        for name, (ext, env) in cases.items():
            once(ext, env)  # warm-up: .pyc files, page cache
        for _ in range(args.runs):
            for name, (ext, env) in cases.items():
                seconds, printed = once(ext, env)
                results[name].append(seconds)
                status[name] = printed
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    anchor = statistics.median(results["%load_ext autoreload (anchor)"])
    print(f"{'case':<52} {'median ms':>10} {'max ms':>8} {'/ anchor':>9}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<52} {med * 1000:>10.1f} {max(values) * 1000:>8.1f} {med / anchor:>9.1f}")
    for name, line in status.items():
        if line:
            print(f"  {name}: {line}")
    worst = max(statistics.median(v) for n, v in results.items() if "kachery_jupyter" in n)
    print(f"%load_ext kachery_jupyter, worst median = {worst * 1000:.0f} ms (aim well under {AIM_S * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
