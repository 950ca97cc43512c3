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


# -- a magic line is split as a POSIX shell splits it ---------------------------------------


def test_quotes_group_words_and_are_not_kept(ip: InteractiveShell) -> None:
    ip.run_line_magic("kc_mutable", "set k 'two words'")
    assert kc.get_mutable_local("k") == "two words"
    ip.run_line_magic("kc_mutable", 'set k "say \\"hi\\" twice"')
    assert kc.get_mutable_local("k") == 'say "hi" twice'
    assert ip.run_line_magic("kc_mutable", "get 'k'") == 'say "hi" twice'


def test_set_takes_the_rest_of_the_line_as_the_value(ip: InteractiveShell) -> None:
    ip.run_line_magic("kc_mutable", "set notes/today three plain words")
    assert kc.get_mutable_local("notes/today") == "three plain words"
    ip.run_line_magic("kc_mutable", "set k --local two words")  # an option among the words
    assert kc.get_mutable_local("k") == "two words"
    ip.run_line_magic("kc_mutable", "set k -- --looks-like-an-option")
    assert kc.get_mutable_local("k") == "--looks-like-an-option"


def test_a_quoted_label_is_the_label(ip: InteractiveShell) -> None:
    ip.user_ns["meta"] = {"rate": 30000}
    uri = ip.run_line_magic("kc_store", 'meta --label "my meta.json"')
    assert kc.parse_sha1_uri(uri).label == "my meta.json" and "%22" not in uri
    assert ip.run_line_magic("kc_load", uri) == {"rate": 30000}


def test_options_anywhere_and_quoted_paths(ip: InteractiveShell, tmp_path: Path) -> None:
    folder = tmp_path / "two words"
    folder.mkdir()
    (folder / "a b.csv").write_text("x\n")
    uri = ip.run_line_magic("kc_store", f"--label t.csv --file '{folder / 'a b.csv'}'")
    assert uri.endswith("?label=t.csv")
    numbers = kc.store_json_local([1, 2])
    ip.run_line_magic("kc_load", f"--as json -o numbers {numbers}")
    assert ip.user_ns["numbers"] == [1, 2]


def test_an_unclosed_quote_is_a_usage_error(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="no closing quotation") as info:
        ip.run_line_magic("kc_mutable", "set k 'open")
    assert "\n" not in str(info.value)
    assert kc.get_mutable_local("k") is None


# -- messages say what happened and what to do ------------------------------------------------


def test_loading_json_as_npy_says_it_is_json(ip: InteractiveShell) -> None:
    uri = kc.store_json_local({"a": 1}, label="meta.json")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_load", f"{uri} --as npy")
    assert "not an npy array: it is JSON" in str(info.value)
    assert "allow_pickle" not in str(info.value)
    with pytest.raises(UsageError, match="not a pickle: it is JSON"):
        ip.run_line_magic("kc_load", f"{uri} --as pkl")
    npy = kc.store_npy_local(np.arange(3))
    with pytest.raises(UsageError, match="not JSON: it is an npy array"):
        ip.run_line_magic("kc_load", f"{npy} --as json")


class Sample:
    def __init__(self) -> None:
        self.rate = 30000


def test_storing_a_class_instance_says_what_can_be_stored(ip: InteractiveShell) -> None:
    ip.user_ns["s"] = Sample()
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_store", "s")
    message = str(info.value)
    assert "Refusing to unpickle" not in message and "\n" not in message
    assert "cannot store a Sample" in message and "numpy arrays" in message and "run" in message


def test_a_dict_with_nan_says_why_it_is_not_json(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns["m"] = {"score": float("nan")}
    uri = ip.run_line_magic("kc_store", "m")
    assert uri.endswith("?label=m.pkl")
    err = capsys.readouterr().err
    assert "m holds NaN or Infinity, which JSON cannot hold: stored as a pickle" in err
    ip.user_ns["ok"] = {"score": 1.5}
    ip.run_line_magic("kc_store", "ok")
    assert capsys.readouterr().err == ""


def test_store_with_the_hub_down_suggests_local(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KACHERY_HUB_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "p1")
    ip.user_ns["t"] = "text"
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_store", "t")
    assert "cannot reach the hub" in str(info.value) and "--local" in str(info.value)
    assert "\n" not in str(info.value)
    assert ip.run_line_magic("kc_store", "t --local").startswith("sha1://")
