"""Compatibility with kachery-cloud 0.4.10: ``sha1_of_dict``, and what ``store_json`` writes.

The hashes below were computed with kachery-cloud 0.4.10 itself. When its venv
``bench/.venv-kachery-cloud`` exists (``bench/bench_store_local.py`` makes it), the
same table is also run through it in a subprocess, so a case added here is checked
against the real thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kachery_core as kc
from conftest import REPO

KC_PYTHON = REPO / "bench" / ".venv-kachery-cloud" / "bin" / "python"

#: Python expressions (evaluated with ``math`` and ``np`` = numpy in scope) and kachery-cloud 0.4.10's
#: ``sha1_of_dict`` of each, or "refused" where it raises.
CASES: dict[str, str] = {
    "{'a': 1.0}": "9f89c740ceb46d7418c924a78ac57941d5e96520",
    "{'a': 1}": "9f89c740ceb46d7418c924a78ac57941d5e96520",
    "{'a': -0.0}": "9538984bf72dafdf35fa15b4f2e08e3e498febfb",
    "{'a': 0.0}": "9538984bf72dafdf35fa15b4f2e08e3e498febfb",
    "{'a': 1e20}": "1b4cf32d728079f388c899f1bb9efcd83fc7281b",
    "{'a': 1e21}": "fc76cea0b1b94a7afa9b31ecf0bd5d3902075f0f",
    "{'a': 1e22}": "423e9ca68fe39231d2d33a3a5edeb715b6355df7",
    "{'a': 1e300}": "837ed72c483237ed51d65c836c1ec96415514517",
    "{'a': -1e16}": "2545252b433970bf8698b7ac8a43879ee8928514",
    "{'a': 2.0 ** 53 + 2}": "d6e065f7d23b8f3a1eebd2b6be52d81f216552b4",
    "{'a': 2 ** 64}": "33cf8587587ad68a4faa1f8ca95bcf45106f70bc",
    "{'a': 10 ** 30}": "1b3bb0de658e10e000ac9999f62261c8443dc7f8",
    "{'a': 1.5}": "40511316b2450809a4e4fc1eaaba299502c69678",
    "{'a': 0.1}": "c8f33a5d987a778e10765348df97924dd06e6e33",
    "{'a': 0.1 + 0.2}": "79841da041e6e941bb9f7b99c30809e6862f5084",
    "{'a': 5e-324}": "9d2f82781d86193715c33472f9923ef6a7932429",
    "{'a': 1.5e300}": "ba12364a03a9ceb881e37ea5a2b6bf40b5d8d7ae",
    "{'a': -2.5}": "e0094542b111df6583bc5e6acdd4b7ea8c148baa",
    "{'b': [1.0, 2.5, (3.0, {'c': 4.0})]}": "2102dda543e3a00b5ee3f9c7199f1ef2d2badcc1",
    "{'x': {'y': {'z': 100.0, 'w': [0.0, -0.0]}}}": "b751ae035d711fd2d761e96d31adccd341cb8470",
    "{'t': (1, 2.0)}": "3cc67a2a60d0c35f0213aa32682e4faee4ce2525",
    "{'s': 'é😀\\x7f\\u2028\\n\"\\\\'}": "b685d490f02ba6a6d58b356fd0815be8f484b7d7",
    "{'n': None, 't': True, 'f': False}": "fd90b8c585d15fbf61837e7cf5a012ccc7df0f69",
    "{2: 'a', 10: 'b'}": "79f4e018ae208297cda5788085d044697f7ef030",
    "{1.5: 'x', 1.0: 'y', 'a': 2.0}": "ba89e07767ce8ec8ac01fcd4d874d3ec8560ad33",
    "{True: 1, False: 2, None: 3, 'a': 4}": "101c388d80a589583976f56bd3c88efc5bd65bcb",
    "{'a': np.float64(2.0), 'b': np.float64(0.25)}": "9a5927034301ef7acb7899681d0efdecd703922f",
    "{'taskInput': {'n': 3.0, 'xs': [1.0, 2.0]}, 'taskName': 'add'}": "8ec98a713a17ffc8aa65108f96de7d0493bd106e",
    "{}": "bf21a9e8fbc5a3846fb05b4fa0859e0917b2202f",
    "{'a': [], 'b': {}}": "dfb415c30546c2411273ef7d23387832283742ce",
    "[1.0, 2.0]": "b874a9cb236fc88a636fad656a401e23b64300da",
    # refused by both
    "{'a': math.nan}": "refused",
    "{'a': math.inf}": "refused",
    "{'a': -math.inf}": "refused",
    "{'a': {1, 2}}": "refused",
    "{(1, 2): 3}": "refused",
    "{'a': np.float32(1.0)}": "refused",
}

_RUN_IN_KACHERY_CLOUD = """
import json, math, sys
import numpy as np
from kachery_cloud import sha1_of_dict
out = {}
for expr in json.load(sys.stdin):
    try:
        out[expr] = sha1_of_dict(eval(expr))
    except (TypeError, ValueError, OverflowError) as e:
        out[expr] = "refused"
json.dump(out, sys.stdout)
"""


def _ours(expr: str) -> str:
    import math

    import numpy as np

    try:
        return kc.sha1_of_dict(eval(expr, {"math": math, "np": np}))
    except kc.SerializationError:
        return "refused"


def _kachery_cloud(exprs: list[str], tmp_path: Path) -> dict[str, str]:
    if not KC_PYTHON.exists():
        pytest.skip(f"kachery-cloud 0.4.10 is not installed in {KC_PYTHON.parent.parent} "
                    "(python bench/bench_store_local.py creates it)")
    env = {**os.environ, "KACHERY_CLOUD_DIR": str(tmp_path / "kachery-cloud-0.4.10")}  # importing it creates one
    version = subprocess.run([str(KC_PYTHON), "-c", "import importlib.metadata as m; print(m.version('kachery-cloud'))"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert version == "0.4.10", f"{KC_PYTHON} holds kachery-cloud {version}"
    out = subprocess.run([str(KC_PYTHON), "-c", _RUN_IN_KACHERY_CLOUD], input=json.dumps(exprs),
                         capture_output=True, text=True, check=True, env=env, timeout=120)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_sha1_of_dict_is_kachery_cloud_0_4_10s(tmp_path: Path) -> None:
    theirs = _kachery_cloud(list(CASES), tmp_path)
    ours = {expr: _ours(expr) for expr in CASES}
    assert ours == theirs


@pytest.mark.parametrize("expr", list(CASES))
def test_sha1_of_dict_gives_kachery_cloud_0_4_10s_hashes(expr: str) -> None:
    assert _ours(expr) == CASES[expr]


def test_integral_floats_hash_as_integers() -> None:
    text = '{"a":100000000000000000000,"b":[0,2],"c":1.5}'  # what kachery-cloud hashes
    assert kc.sha1_of_dict({"c": 1.5, "b": [-0.0, 2.0], "a": 1e20}) == hashlib.sha1(text.encode()).hexdigest()
    assert kc.sha1_of_dict({10: 1, 2: 2}) == hashlib.sha1(b'{"10":1,"2":2}').hexdigest()  # keys sort as text


def test_sha1_of_dict_refuses_keys_that_would_be_written_alike() -> None:
    with pytest.raises(kc.SerializationError, match="two keys are both written '1'"):
        kc.sha1_of_dict({1: "a", "1": "b"})


def test_sha1_of_dict_refuses_a_value_that_contains_itself() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(kc.SerializationError, match="contains itself"):
        kc.sha1_of_dict({"a": loop})


def test_store_json_keeps_floats_as_they_are(tmp_path: Path) -> None:
    """store_json's bytes are simplejson's plain dump (floats kept): its URIs must not change."""
    obj = {"b": [1.0, 2.5], "a": 1e20, "c": -0.0}
    uri = kc.store_json_local(obj)
    assert kc.parse_sha1_uri(uri).sha1 == hashlib.sha1(b'{"a":1e+20,"b":[1.0,2.5],"c":-0.0}').hexdigest()
    assert kc.parse_sha1_uri(uri).sha1 != kc.sha1_of_dict(obj)
    code = ("import sys, json, kachery_cloud as k; "
            "print(k.store_json_local(json.loads(sys.argv[1]), label='x.json'))")
    if not KC_PYTHON.exists():
        pytest.skip(f"kachery-cloud 0.4.10 is not installed in {KC_PYTHON.parent.parent}")
    env = {**os.environ, "KACHERY_CLOUD_DIR": str(tmp_path / "kachery-cloud-0.4.10")}
    theirs = subprocess.run([str(KC_PYTHON), "-c", code, json.dumps(obj)], capture_output=True, text=True,
                            check=True, env=env, timeout=120).stdout.strip()
    assert kc.parse_sha1_uri(theirs).sha1 == kc.parse_sha1_uri(uri).sha1


# ---------------------------------------------------------------- which Python


def _lowest_python() -> tuple[int, int]:
    """The lowest Python version pyproject.toml's requires-python admits (a ``>=3.N`` bound)."""
    import tomllib

    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r} is not a plain '>=3.N'"
    return 3, int(m.group(1))


def test_every_dependency_admits_the_lowest_declared_python() -> None:
    """Each distribution kachery-jupyter needs (all extras, followed through the installed metadata)
    declares a Requires-Python that admits the lowest version requires-python claims."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    major, minor = _lowest_python()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lowest = f"{major}.{minor}"
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    todo += [(Requirement(r), extra) for extra, reqs in project["optional-dependencies"].items() for r in reqs]
    seen: set[tuple[str, frozenset[str]]] = set()
    refused: list[str] = []
    while todo:
        req, extra = todo.pop()
        env = {"python_version": lowest, "python_full_version": f"{lowest}.0", "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (e.g. needed on another platform): nothing to read
        requires_python = next(iter(dist.metadata.get_all("Requires-Python") or []), None)
        # Some release of that minor version will do: a dependency may want a later patch release
        # (soupsieve: >=3.11.5), and pip picks an older version of it on an older patch release.
        if requires_python and not any(SpecifierSet(requires_python).contains(f"{lowest}.{patch}") for patch in range(50)):
            refused.append(f"{dist.metadata['Name']} {dist.version} needs Python {requires_python}")
        for text in dist.requires or []:
            sub = Requirement(text)
            for want in req.extras or {""}:
                todo.append((sub, want))
    assert len(seen) > 20  # the walk did reach the dependencies
    assert not refused, f"requires-python says >={lowest}, but: " + "; ".join(sorted(refused))


def _fake_python(folder: Path, name: str, version: tuple[int, int]) -> None:
    """An executable ``name`` that runs ``-c CODE`` with ``sys.version_info`` set to ``version``."""
    script = folder / name
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.version_info = ({version[0]}, {version[1]}, 0, 'final', 0)\n"
                      "exec(sys.argv[2])\n")
    script.chmod(0o755)


def _pick_python(tmp_path: Path, pythons: dict[str, tuple[int, int]]) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "bin"
    folder.mkdir(parents=True)
    for name, version in pythons.items():
        _fake_python(folder, name, version)
    text = (REPO / "dev.sh").read_text()
    function = text[text.index("pick_python() {"):]
    function = function[: function.index("\n}\n") + 3]
    env = {"PATH": str(folder), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", "-c", f"set -euo pipefail\n{function}\npick_python"], capture_output=True,
                          text=True, env=env, timeout=60)


def test_dev_sh_builds_its_venv_with_the_lowest_declared_python(tmp_path: Path) -> None:
    """dev.sh setup (and so .ci/run) installs on the lowest Python requires-python admits, when present."""
    major, minor = _lowest_python()
    below, lowest, above = f"{major}.{minor - 1}", f"{major}.{minor}", f"{major}.{minor + 1}"
    every = {f"python{below}": (major, minor - 1), f"python{lowest}": (major, minor),
             f"python{above}": (major, minor + 1), "python3": (major, minor + 1)}
    assert _pick_python(tmp_path / "all", every).stdout.strip() == f"python{lowest}"
    older = {f"python{below}": (major, minor - 1), "python3": (major, minor - 1), f"python{above}": (major, minor + 1)}
    assert _pick_python(tmp_path / "older", older).stdout.strip() == f"python{above}"
    none = _pick_python(tmp_path / "none", {f"python{below}": (major, minor - 1), "python3": (major, minor - 1)})
    assert none.returncode != 0
    assert f"needs Python {lowest} or newer" in none.stderr


def test_the_readme_and_classifiers_say_the_same_lowest_python() -> None:
    import tomllib

    major, minor = _lowest_python()
    assert f"Python {major}.{minor} or newer" in (REPO / "README.md").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    versions = sorted(int(c.rsplit(".", 1)[1]) for c in project.get("classifiers", [])
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions and versions[0] == minor, versions


# A calculation's job id is kachery-cloud's sha1_of_dict of {"taskInput", "taskName"}: nested inputs
# with integral floats, written as kachery-cloud 0.4.10 writes them.
_TASK_INPUTS = [
    ("mean_rate.1", "{'spike_times': [0.1, 2.0, 3.5], 'duration': 10.0, 'opts': {'bins': 4.0, 'norm': True}}"),
    ("spikes", "{'unit_ids': [1, 2.0, 3], 'window': {'start': -0.0, 'end': 1e20}, 'label': 'é'}"),
    ("empty", "{}"),
]


def test_a_calculations_job_id_is_kachery_cloud_0_4_10s_sha1_of_dict(tmp_path: Path) -> None:
    import math

    import numpy as np

    exprs = [f"{{'taskInput': {inp}, 'taskName': {name!r}}}" for name, inp in _TASK_INPUTS]
    theirs = _kachery_cloud(exprs, tmp_path)
    for (name, inp), expr in zip(_TASK_INPUTS, exprs):
        job_id = kc.task_job_id(name, eval(inp, {"math": math, "np": np}))
        assert job_id == theirs[expr] != "refused", (name, inp)
