from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kachery_core as kc
from kachery_core._cli import build_parser

CLI = str(Path(sys.executable).parent / "kachery-jupyter")  # the installed console script


def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], capture_output=True, env=os.environ, input=input, timeout=60)


def test_store_load_cat_info_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("from the command line")
    out = run("store-local", str(src), "--label", "notes.txt")
    assert out.returncode == 0, out.stderr
    uri = out.stdout.decode().strip()
    assert uri == kc.store_file_local(src, label="notes.txt")
    assert run("cat", uri).stdout == b"from the command line"
    assert Path(run("load", uri).stdout.decode().strip()).read_text() == "from the command line"
    info = json.loads(run("info", uri).stdout)
    assert info["size"] == len("from the command line") and info["label"] == "notes.txt"
    dest = tmp_path / "copy.txt"
    assert run("load", uri, "--dest", str(dest)).returncode == 0 and dest.read_text() == "from the command line"
    ref = run("store-local", str(src), "--reference").stdout.decode().strip()
    assert f"location={src}" in ref


def test_mutables_from_the_command_line() -> None:
    assert run("mutable", "set", "exp/latest", "sha1://" + "1" * 40).returncode == 0
    assert run("mutable", "get", "exp/latest").stdout.decode().strip() == "sha1://" + "1" * 40
    assert kc.get_mutable_local("exp/latest") == "sha1://" + "1" * 40
    assert run("mutable", "delete", "exp/latest").returncode == 0
    missing = run("mutable", "get", "exp/latest")
    assert missing.returncode == 1 and b"is not set" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("load", "ipfs://abc"), b"unknown scheme 'ipfs'"),
        (("cat", "sha1://123"), b"is not a sha1"),
        (("load", "sha1://" + "0" * 40), b"not in the local store"),
        (("store-local", "/no/such/file"), b"no such file to store"),
        (("mutable", "set", "../x", "v"), b"'..' segments"),
    ],
)
def test_errors_are_one_clear_line_and_exit_1(args: tuple[str, ...], message: bytes) -> None:
    out = run(*args)
    assert out.returncode == 1
    assert out.stderr.startswith(b"error: ") and message in out.stderr
    assert b"Traceback" not in out.stderr


def test_client_id_and_dir(kachery_dir: Path) -> None:
    assert run("client-id").stdout.decode().strip() == kc.get_client_id()
    assert run("dir").stdout.decode().strip() == str(kachery_dir)


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        out = run(name, "--help")
        assert out.returncode == 0 and b"usage: kachery-jupyter " + name.encode() in out.stdout
    for action in ("get", "set", "delete"):
        assert run("mutable", action, "--help").returncode == 0
