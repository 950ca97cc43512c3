from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc




def test_load_ext_prints_one_status_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str], kachery_dir: Path) -> None:
    ip.run_line_magic("reload_ext", "kachery_jupyter")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"kachery-jupyter: local store {kachery_dir}; no hub yet (sign in with %kc_login)"]


def test_load_ext_imports_no_server_or_widget_dependency() -> None:
    code = (
        "import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'kachery_jupyter')\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'kachery_hub', 'anywidget') if m in sys.modules]\n"
        "print('LOADED', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("value", "ext", "loader"),
    [
        (np.arange(5.0), "npy", kc.load_npy),
        ("some text", "txt", kc.load_text),
        ({"a": [1, 2]}, "json", kc.load_json),
        ({"arr": np.arange(3), "s": {1, 2}}, "pkl", kc.load_pkl),
    ],
)
def test_kc_store_picks_the_serializer(ip: InteractiveShell, value: Any, ext: str, loader: Any) -> None:
    ip.user_ns["x"] = value
    uri = ip.run_line_magic("kc_store", "x")
    assert uri.endswith(f"?label=x.{ext}")
    loaded = loader(uri)
    assert repr(loaded) == repr(value)
    again = ip.run_line_magic("kc_load", uri)
    assert repr(again) == repr(value)


def test_kc_store_file_and_label(ip: InteractiveShell, tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    uri = ip.run_line_magic("kc_store", f"--file {path}")
    assert uri.endswith("?label=table.csv")
    assert Path(ip.run_line_magic("kc_load", uri)).read_text() == "a,b\n1,2\n"
    ip.user_ns["t"] = "x"
    assert ip.run_line_magic("kc_store", "t --label custom.txt").endswith("?label=custom.txt")


def test_kc_load_output_variable_and_kind(ip: InteractiveShell) -> None:
    uri = kc.store_json_local([1, 2, 3])  # no label: the kind must be given
    assert Path(ip.run_line_magic("kc_load", uri)).exists()
    ip.run_line_magic("kc_load", f"{uri} --as json -o numbers")
    assert ip.user_ns["numbers"] == [1, 2, 3]


def test_kc_mutable(ip: InteractiveShell) -> None:
    assert ip.run_line_magic("kc_mutable", "set exp/latest sha1://abc") is None
    assert ip.run_line_magic("kc_mutable", "get exp/latest") == "sha1://abc"
    assert kc.get_mutable_local("exp/latest") == "sha1://abc"
    ip.run_line_magic("kc_mutable", "delete exp/latest")
    assert kc.get_mutable_local("exp/latest") is None


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("kc_store", "nope", "no variable named 'nope'"),
        ("kc_store", "--file /no/such/file", "no such file to store"),
        ("kc_store", "", "the following arguments are required: name"),
        ("kc_load", "sha1://1234", "'1234' is not a sha1"),
        ("kc_load", "ipfs://Qm", "unknown scheme 'ipfs'"),
        ("kc_load", "sha1://" + "0" * 40, "not in the local store"),
        ("kc_load", "sha1://" + "0" * 40 + " --as yaml", "invalid choice: 'yaml'"),
        ("kc_mutable", "get ../x", "'..' segments"),
        ("kc_mutable", "set k", "needs a value"),
        ("kc_mutable", "get missing", "is not set"),
        ("kc_mutable", "frobnicate k", "invalid choice: 'frobnicate'"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip: InteractiveShell, magic: str, line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(magic, line)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_cell_with_a_mistake_shows_no_traceback(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    ip.run_cell("%kc_load sha1://1234")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "UsageError: Invalid kachery URI 'sha1://1234'" in text
    assert "Traceback" not in text
