from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)

import kachery_core as kc
from kachery_core._cli import build_parser

CLI = str(Path(sys.executable).parent / "kachery-jupyter")  # the installed console script


def run(*args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], capture_output=True, env=env or dict(os.environ), input=input, timeout=60)


def one_error_line(out: subprocess.CompletedProcess[bytes]) -> str:
    """The error a failed command printed, checked to be one ``error: …`` line and exit code 1."""
    assert out.returncode == 1, out
    text = out.stderr.decode()
    assert text.startswith("error: ") and text.count("\n") == 1 and "Traceback" not in text, text
    return text


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
    for action in ("get", "set", "delete", "list"):
        assert run("mutable", action, "--help").returncode == 0


# -- the hub from the command line -----------------------------------------------------------


def computer(real_hub: HubProcess, tmp_path: Path, name: str, email: str | None = None) -> dict[str, str]:
    """The environment of a computer using ``real_hub``, given a sign-in token for ``email``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
    env.update(KACHERY_CLOUD_DIR=str(tmp_path / name), KACHERY_HUB_URL=real_hub.url)
    if email:
        env["KACHERY_HUB_TOKEN"] = real_hub.token(email)
    return env


@pytest.mark.slow
def test_store_to_the_hub_projects_and_members(real_hub: HubProcess, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ada = computer(real_hub, tmp_path, "ada", "ada@example.org")
    bo = computer(real_hub, tmp_path, "bo", "bo@example.org")
    src = tmp_path / "notes.txt"
    src.write_text("shared from the command line")
    out = run("store", str(src), env=ada)
    assert out.returncode == 0, out.stderr
    uri = out.stdout.decode().strip()
    assert uri == kc.store_file_local(src, label="notes.txt"), "labelled with the file's name"
    assert not (tmp_path / "ada" / "sha1").exists(), "stored on the hub, not copied into the local store"
    assert "not in" in one_error_line(run("cat", uri, env=bo)), "bo is not a member yet"

    projects = json.loads(run("projects", "--json", env=ada).stdout)
    assert [(p["name"], p["role"], p["owner"]) for p in projects] == [("default", "admin", "ada@example.org")]
    pid = projects[0]["project_id"]
    monkeypatch.setenv("KACHERY_CLOUD_DIR", ada["KACHERY_CLOUD_DIR"])  # ada adds bo from Python
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    kc.set_project_member(pid, "bo@example.org", "read")

    assert run("cat", uri, env=bo).stdout == b"shared from the command line"
    table = run("projects", env=bo).stdout.decode().splitlines()
    assert table[0].split() == ["ID", "NAME", "ROLE", "OWNER"]
    rows = sorted(line.split()[1:] for line in table[1:])
    assert rows == [["default", "admin", "bo@example.org"], ["default", "read", "ada@example.org"]]
    assert any(line.split()[0] == pid for line in table[1:])
    members = run("members", pid, env=bo).stdout.decode().splitlines()
    assert [line.split() for line in members] == [["EMAIL", "ROLE"], ["ada@example.org", "admin"],
                                                  ["bo@example.org", "read"]]
    assert "read access" in one_error_line(run("store", str(src), "--project", pid, env=bo))

    other = tmp_path / "other.txt"
    other.write_text("only on ada's computer")
    local_uri = run("store", str(other), "--local", env=ada).stdout.decode().strip()
    assert (tmp_path / "ada" / "sha1").exists()
    one_error_line(run("cat", local_uri, env=bo))


@pytest.mark.slow
def test_hub_mutables_from_the_command_line(real_hub: HubProcess, tmp_path: Path) -> None:
    ada = computer(real_hub, tmp_path, "ada", "ada@example.org")
    uri = "sha1://" + "1" * 40
    assert run("mutable", "set", "exp/latest", uri, env=ada).returncode == 0
    assert run("mutable", "set", "exp/note", "two words", env=ada).returncode == 0
    assert run("mutable", "get", "exp/latest", env=ada).stdout.decode() == uri + "\n"
    assert run("mutable", "list", "exp/", env=ada).stdout.decode().splitlines() == ["exp/latest", "exp/note"]
    assert not (tmp_path / "ada" / "mutables").exists(), "with a hub, mutables live in the project"
    pid = json.loads(run("projects", "--json", env=ada).stdout)[0]["project_id"]
    assert run("mutable", "get", "exp/note", "--hub", "--project", pid, env=ada).stdout == b"two words\n"

    assert run("mutable", "set", "here", "v", "--local", env=ada).returncode == 0
    assert run("mutable", "get", "here", "--local", env=ada).stdout == b"v\n"
    assert "is not set" in one_error_line(run("mutable", "get", "here", env=ada))
    assert "needs a hub" in one_error_line(run("mutable", "list", "--local", env=ada))
    assert "--local" in one_error_line(run("mutable", "get", "here", "--local", "--project", pid, env=ada))

    assert run("mutable", "delete", "exp/latest", env=ada).returncode == 0
    assert "is not set" in one_error_line(run("mutable", "get", "exp/latest", env=ada))
    assert "is not set" in one_error_line(run("mutable", "delete", "exp/latest", env=ada))


@pytest.mark.slow
def test_not_signed_in_says_how_to_sign_in(real_hub: HubProcess, tmp_path: Path) -> None:
    newcomer = computer(real_hub, tmp_path, "newcomer")
    for args in (("projects",), ("mutable", "set", "k", "v"), ("members",)):
        message = one_error_line(run(*args, env=newcomer))
        assert "not signed in" in message and "kachery-jupyter init" in message, message
        assert "kachery_core.init" not in message


def test_without_a_hub_store_is_local_and_hub_commands_say_how_to_get_one(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("here only")
    out = run("store", str(src))
    assert out.returncode == 0 and out.stdout.decode().strip() == kc.store_file_local(src, label="notes.txt")
    assert b"no hub" in out.stderr
    for args in (("projects",), ("members", "p"), ("mutable", "get", "k", "--hub"), ("store", str(src), "--project", "p")):
        message = one_error_line(run(*args))
        assert "needs a hub" in message and "kachery-jupyter init --hub URL" in message, message


def test_store_with_the_hub_down_suggests_local(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("x")
    env = {**os.environ, "KACHERY_HUB_URL": f"http://127.0.0.1:{free_port()}", "KACHERY_CLOUD_PROJECT": "p"}
    message = one_error_line(run("store", str(src), env=env))
    assert "cannot reach the hub" in message and "--local" in message
