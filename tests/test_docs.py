"""The README tells the truth: commands, CLI, environment variables."""

from __future__ import annotations

import re

from conftest import REPO

from kachery_core import _constants
from kachery_core._cli import build_parser

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None and README.index(block.group(0)) < 200
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["bash dev.sh start", "bash dev.sh test"]
    assert "exec bash dev.sh test" in (REPO / ".ci" / "run").read_text()


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"kachery-jupyter {name}" in README, name
    for action in ("get", "set", "delete"):
        assert f"mutable {action}" in README


def test_every_environment_variable_is_documented() -> None:
    names = [v for k, v in vars(_constants).items() if k.startswith("ENV_")]
    assert len(names) >= 5
    for name in names:
        assert f"`{name}`" in README, name


def test_every_public_function_is_documented() -> None:
    import kachery_core

    for name in kachery_core.__all__:
        obj = getattr(kachery_core, name)
        if callable(obj) and not isinstance(obj, type):
            assert name in README, name


def test_every_magic_is_documented() -> None:
    from kachery_jupyter._magics import KacheryMagics

    names = list(KacheryMagics.magics["line"]) + list(KacheryMagics.magics["cell"])
    assert "kc_login" in names
    for name in names:
        assert f"`%{name}" in README, name


def test_every_hub_environment_variable_is_documented() -> None:
    from kachery_hub import _settings

    names = [v for k, v in vars(_settings).items() if k.startswith("ENV_")]
    assert len(names) >= 7
    for name in names:
        assert f"`{name}`" in README, name
