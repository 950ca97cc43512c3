from __future__ import annotations

import re
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


# -- what %kc_store returns: a str with a rich display -----------------------------------------


def shown(ip: InteractiveShell, obj: Any) -> dict[str, Any]:
    """What a notebook is sent to display ``obj``: its MIME bundle."""
    assert ip.display_formatter is not None
    data: dict[str, Any] = ip.display_formatter.format(obj)[0]
    return data




def test_kc_store_returns_a_str_shown_with_label_size_and_copy_button(ip: InteractiveShell) -> None:
    ip.user_ns["arr"] = np.arange(5.0)
    uri = ip.run_line_magic("kc_store", "arr")
    assert isinstance(uri, str) and uri == kc.store_npy_local(np.arange(5.0), label="arr.npy")
    assert kc.load_npy(uri + "") .tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # str operations give plain strings
    data = shown(ip, uri)
    assert data["text/plain"] == str(uri)  # the bare URI, no quotes: what a terminal and a saved notebook show
    html = data["text/html"]
    size = Path(kc.load_file(uri)).stat().st_size
    assert ">arr.npy</b>" in html and f"{size} B" in html and "this computer only" in html
    assert f'data-uri="{uri}"' in html and ">Copy</button>" in html and "<script" not in html
    # inside a list it is a string like any other
    assert shown(ip, [uri])["text/plain"] == repr([str(uri)])


def test_uri_equals_kc_store_in_a_cell(ip: InteractiveShell) -> None:
    ip.user_ns["note"] = "text"
    ip.run_cell("uri = %kc_store note")
    assert isinstance(ip.user_ns["uri"], str) and ip.user_ns["uri"].endswith("?label=note.txt")
    assert kc.load_text(ip.user_ns["uri"]) == "text"


def _html_elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, dict(attrs)))

    Collect().feed(html)
    return found


HOSTILE = '<img src=x onerror="alert(1)">\'"&<script>alert(2)</script>.json'


def test_the_rich_display_escapes_a_hostile_label(ip: InteractiveShell) -> None:
    from kachery_jupyter._display import StoredURI

    ip.user_ns["meta"] = {"a": 1}
    uri = ip.run_line_magic("kc_store", f"meta --label '{HOSTILE.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'")
    assert isinstance(uri, StoredURI) and uri.label == HOSTILE
    html = shown(ip, uri)["text/html"]
    elements = _html_elements(html)
    assert {tag for tag, _ in elements} == {"div", "b", "span", "code", "button"}
    assert all(set(attrs) <= {"class", "style", "type", "title", "data-uri", "onclick"} for _, attrs in elements)
    assert [attrs["data-uri"] for tag, attrs in elements if tag == "button"] == [str(uri)]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#x27;&quot;&amp;&lt;script&gt;" in html
    hub_uri = StoredURI(str(uri), size=10, project_id="p1", project_name=HOSTILE, hub_url="http://hub")
    hub_html = hub_uri._repr_html_()
    assert "<img" not in hub_html and "<script" not in hub_html and "&lt;img" in hub_html


def test_a_stored_uri_is_stored_as_the_plain_string_it_is(ip: InteractiveShell) -> None:
    import pickle

    ip.user_ns["arr"] = np.arange(3)
    uri = ip.run_line_magic("kc_store", "arr")
    assert type(pickle.loads(pickle.dumps(uri))) is str
    ip.user_ns["d"] = {"raw": uri, "x": np.arange(2)}  # not JSON: a pickle
    stored = ip.run_line_magic("kc_store", "d")
    assert stored == kc.store_pkl_local({"raw": str(uri), "x": np.arange(2)}, label="d.pkl")
    ip.user_ns["j"] = {"raw": uri}
    assert ip.run_line_magic("kc_store", "j") == kc.store_json_local({"raw": str(uri)}, label="j.json")


# -- %kc_status ----------------------------------------------------------------------------


def test_kc_status_without_a_hub(ip: InteractiveShell, kachery_dir: Path) -> None:
    import platform

    import kachery_jupyter

    kc.store_text_local("x" * 2000)
    status = ip.run_line_magic("kc_status", "")
    assert "none" in status["hub"] and "%kc_login" in status["hub"]
    assert status["local store"] == f"{kachery_dir} (1 file, 2.0 KiB)"
    assert status["client"] == kc.get_client_id()
    assert f"kachery-jupyter {kc.__version__}" in status["versions"]
    assert f"Python {platform.python_version()}" in status["versions"] and "anywidget" in status["versions"]
    text = shown(ip, status)["text/plain"]
    assert text.splitlines()[0].startswith("hub:") and "local store:" in text
    assert "<th" in shown(ip, status)["text/html"]
    assert kachery_jupyter is not None


# -- help and mistakes ------------------------------------------------------------------------


def test_every_magic_has_help_with_an_example(ip: InteractiveShell) -> None:
    magics = ip.magics_manager.magics
    names = {("line", n) for n in magics["line"] if n.startswith("kc_")} | \
            {("cell", n) for n in magics["cell"] if n.startswith("kc_")}
    assert {("line", n) for n in ("kc_store", "kc_load", "kc_mutable", "kc_status", "kc_login", "kc_feed",
                                   "kc_tasks")} | {("cell", "kc_task")} <= names
    for kind, name in sorted(names):
        doc = magics[kind][name].__doc__ or ""
        prefix = "%%" if kind == "cell" else "%"
        # an example line (indented), beside the usage line IPython writes at the top
        assert re.search(rf"^\s{{4,}}(\w+ = )?{re.escape(prefix + name)}\b", doc, re.M), f"{prefix}{name}? has no example"
        info = ip.object_inspect(prefix + name)
        assert info["found"] and (prefix + name) in (info["docstring"] or "")


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("kc_store", "x --frob", "%kc_store: unrecognized arguments: --frob"),
        ("kc_store", "x -h", "run %kc_store?"),
        ("kc_store", "x --project p1", "no hub is configured"),
        ("kc_store", "x --project p1 --local", "--project and --local disagree"),
        ("kc_store", "x --label", "%kc_store: argument --label: expected one argument"),
        ("kc_load", "", "%kc_load: the following arguments are required: uri"),
        ("kc_load", "sha1://" + "0" * 40 + " -o class", "-o 'class': not a valid variable name"),
        ("kc_load", "sha1://" + "0" * 40 + " -o 2x", "-o '2x': not a valid variable name"),
        ("kc_load", "not-a-uri", "not-a-uri"),
        ("kc_mutable", "", "the following arguments are required: action"),
        ("kc_mutable", "list exp/", "needs a hub"),
        ("kc_mutable", "get k --project p1", "no hub is configured"),
        ("kc_mutable", "get k --nope", "%kc_mutable: unrecognized arguments: --nope"),
        ("kc_status", "now", "%kc_status: unrecognized arguments: now"),
        ("kc_login", "--hub ftp://x", "must start with http://"),
        ("kc_feed", "", "%kc_feed: the following arguments are required: feed"),
        ("kc_feed", "abc --start -1", "a message number is 0 or more"),
        ("kc_tasks", "--limit 0", "list at least 1 job"),
    ],
)
def test_each_mistake_is_one_line(ip: InteractiveShell, magic: str, line: str, message: str) -> None:
    ip.user_ns["x"] = [1, 2]
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(magic, line)
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()


@pytest.mark.parametrize("cell", ["%kc_store x --frob", "%kc_status now", "%kc_mutable list", "%kc_load sha1://x -o 1"])
def test_a_mistake_in_a_cell_shows_one_line_and_no_traceback(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                                            cell: str) -> None:
    capsys.readouterr()
    ip.run_cell(cell)
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert text.startswith("UsageError: ") and "\n" not in text and "Traceback" not in text, text


def test_a_wrong_output_name_is_said_before_any_download(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    from kachery_jupyter import _objects

    loads: list[str] = []
    monkeypatch.setattr(_objects, "load_object", lambda uri, kind=None: loads.append(uri))
    with pytest.raises(UsageError, match="not a valid variable name"):
        ip.run_line_magic("kc_load", "sha1://" + "1" * 40 + " -o for")
    assert loads == []
