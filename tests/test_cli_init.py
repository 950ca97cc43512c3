"""`kachery-jupyter init` against a real hub process: a token, or a link confirmed in a browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from e2e.signin import confirm_token_link
from hub_process import HubProcess, real_hub  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).parent / "kachery-jupyter")




def test_init_with_a_token(real_hub: HubProcess, tmp_path: Path) -> None:
    env = {**os.environ, "KACHERY_CLOUD_DIR": str(tmp_path / "pc")}
    out = subprocess.run([CLI, "init", "--hub", real_hub.url, "--token", real_hub.token("ada@example.org")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"kachery: {real_hub.url}, signed in as ada@example.org" in out.stdout
    bad = subprocess.run([CLI, "init", "--hub", real_hub.url, "--token", "khub_wrong"],
                         env={**env, "KACHERY_CLOUD_DIR": str(tmp_path / "other")}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_init_prints_a_link_and_finishes_when_it_is_confirmed(real_hub: HubProcess, tmp_path: Path) -> None:
    env = {**os.environ, "KACHERY_CLOUD_DIR": str(tmp_path / "pc"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([CLI, "init", "--hub", real_hub.url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        link = re.search(r"(http://\S+/sign-in/\S+)", "".join(lines))
        assert link, lines
        with httpx2.Client(base_url=real_hub.url) as browser:
            confirm_token_link(browser, real_hub.token("grace@example.org"))
            csrf = browser.get(link.group(1)).cookies["kachery_hub_csrf"]
            done = browser.post(link.group(1), data={"action": "confirm", "csrf": csrf})
            assert "confirmed" in done.text
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Signed in as grace@example.org." in out and "signed in as grace@example.org" in out
