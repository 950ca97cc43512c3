"""A fresh computer configured only by ``KACHERY_HUB_URL`` + ``KACHERY_HUB_TOKEN`` (a Colab secret).

Its first use of the hub, whatever it is, signs it in with the token: reading
its user's private files works at once, not only after something else (a store,
``init``) happened to sign it in. Each read runs in a fresh interpreter with a
kachery directory of its own, against a real hub process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from conftest import run_python  # noqa: E402
from hub_process import HubProcess, real_hub  # noqa: E402,F401

pytestmark = pytest.mark.slow


@pytest.fixture
def private_uri(real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A private text file stored by ada from her laptop; returns (URI, a token of ada's)."""
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "ada-laptop"))
    info = kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    uri = kc.store_text("ada's private notes", label="notes.txt")
    assert not kc.get_project(info["default_project_id"])["public_read"]
    return uri, real_hub.token("ada@example.org")


def _on_fresh_computer(hub: HubProcess, tmp_path: Path, name: str, token: str, code: str) -> str:
    env = {"KACHERY_CLOUD_DIR": str(tmp_path / name), "KACHERY_HUB_URL": hub.url, "KACHERY_HUB_TOKEN": token}
    out = run_python("import json, kachery_core as kc\n" + code, env=env, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("load_text", "print(json.dumps(kc.load_text(URI)))", "ada's private notes"),
        ("load_file_info", "i = kc.load_file_info(URI); print(json.dumps([i['size'], i['label']]))",
         [len("ada's private notes"), "notes.txt"]),
        ("load_bytes", "print(json.dumps(kc.load_bytes(URI, start=6, end=15).decode()))", "private n"),
    ],
    ids=["load_text", "load_file_info", "load_bytes"],
)
def test_the_first_use_signs_in_with_the_token(
    real_hub: HubProcess, private_uri: tuple[str, str], tmp_path: Path, name: str, code: str, expected: object
) -> None:
    uri, token = private_uri
    out = _on_fresh_computer(real_hub, tmp_path, f"colab-{name}", token, f"URI = {uri!r}\n{code}")
    assert json.loads(out) == expected


def test_without_a_token_a_fresh_computer_still_reads_as_an_unknown_client(
    real_hub: HubProcess, private_uri: tuple[str, str], tmp_path: Path
) -> None:
    uri, _ = private_uri
    env = {"KACHERY_CLOUD_DIR": str(tmp_path / "stranger"), "KACHERY_HUB_URL": real_hub.url}
    out = run_python(f"import kachery_core as kc\nkc.load_text({uri!r})", env=env, check=False)
    assert out.returncode != 0
    assert "not in any project anonymous clients can read" in out.stderr


def _revoked_token(hub: HubProcess) -> str:
    import subprocess

    from hub_process import HUB_CMD

    token = hub.token("ada@example.org")
    listed = subprocess.run([*HUB_CMD, "token", "list", "--data", str(hub.data), "--user", "ada@example.org"],
                            capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    newest = [line.split()[0] for line in listed[1:] if " active " in line][-1]
    subprocess.run([*HUB_CMD, "token", "revoke", "--data", str(hub.data), newest],
                   capture_output=True, text=True, check=True, timeout=60)
    return token


def test_a_revoked_token_still_reads_public_files_and_says_why_a_private_one_fails(
    real_hub: HubProcess, private_uri: tuple[str, str], tmp_path: Path
) -> None:
    uri, _ = private_uri
    kc.set_project_public(kc.create_project("shared"), True)
    public = kc.store_text("for everyone", project_id=kc.list_projects()[-1]["project_id"])
    token = _revoked_token(real_hub)
    code = (
        "from kachery_core import _hub\n"
        "sign_ins = []\n"
        "register = _hub.HubClient.register\n"
        "_hub.HubClient.register = lambda self, *a: (sign_ins.append(1), register(self, *a))[1]\n"
        f"texts = [kc.load_text({public!r}), kc.load_file_info({public!r})['size'], kc.load_text({public!r})]\n"
        "try:\n"
        f"    kc.load_text({uri!r})\n"
        "    failure = None\n"
        "except kc.HubAuthError as e:\n"
        "    failure = [e.code, str(e)]\n"
        "print(json.dumps([texts, len(sign_ins), failure]))\n"
    )
    texts, sign_ins, failure = json.loads(_on_fresh_computer(real_hub, tmp_path, "colab-revoked", token, code))
    assert texts == ["for everyone", len("for everyone"), "for everyone"]
    assert sign_ins == 1  # tried once, not before every request
    assert failure is not None and failure[0] == "token_revoked"
    assert "KACHERY_HUB_TOKEN was refused: this sign-in token was revoked" in failure[1]
