from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kachery_core as kc
from kachery_core import _mutables
from kachery_core.errors import InvalidMutableKeyError, MutableValueError

segment = st.text(st.characters(blacklist_characters="/\\", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith("@")
)
keys = st.lists(segment, min_size=1, max_size=4).map("/".join)


def test_set_get_delete(kachery_dir: Path) -> None:
    assert kc.get_mutable_local("a/b/c") is None
    assert kc.get_mutable_local("a/b/c", default_value="dflt") == "dflt"
    kc.set_mutable_local("a/b/c", "value ✓")
    assert (kachery_dir / "mutables" / "@a" / "@b" / "c").read_text() == "value ✓"
    assert kc.get_mutable_local("a/b/c") == "value ✓"
    kc.set_mutable_local("a/b/c", "new")
    assert kc.get_mutable_local("a/b/c") == "new"
    assert kc.delete_mutable_local("a/b/c") is True
    assert kc.delete_mutable_local("a/b/c") is False
    assert kc.get_mutable_local("a/b/c") is None


def test_a_key_can_be_a_value_and_a_folder() -> None:
    kc.set_mutable_local("a", "top")
    kc.set_mutable_local("a/b", "below")
    assert (kc.get_mutable_local("a"), kc.get_mutable_local("a/b")) == ("top", "below")


def test_reads_values_written_by_kachery_cloud(kachery_dir: Path) -> None:
    p = kachery_dir / "mutables" / "@project" / "latest"
    p.parent.mkdir(parents=True)
    p.write_text("sha1://" + "a" * 40)
    assert kc.get_mutable_local("project/latest") == "sha1://" + "a" * 40


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("a//b", "empty segment"),
        ("a/b/", "empty segment"),
        ("/etc/passwd", "absolute"),
        ("../outside", "'..' segments"),
        ("a/../../b", "'..' segments"),
        ("a/./b", "'.' segments"),
        ("@a/b", "starts with '@'"),
        ("a/@b", "starts with '@'"),
        ("a\\b", "backslashes"),
        ("x" * 1001, "longer than 1000"),
        ("a/" + "é" * 101, "longer than 200 bytes"),
    ],
)
def test_bad_keys_are_refused_everywhere(key: str, reason: str, kachery_dir: Path) -> None:
    for call in (lambda: kc.set_mutable_local(key, "v"), lambda: kc.get_mutable_local(key), lambda: kc.delete_mutable_local(key)):
        with pytest.raises(InvalidMutableKeyError, match="Invalid mutable key") as info:
            call()
        assert reason in str(info.value)
        assert isinstance(info.value, ValueError)
    assert not (kachery_dir.parent / "outside").exists()


def test_bad_values_are_refused_and_keep_the_old_value() -> None:
    kc.set_mutable_local("k", "kept")
    with pytest.raises(MutableValueError, match="expected a string, got int"):
        kc.set_mutable_local("k", 5)  # type: ignore[arg-type]
    with pytest.raises(MutableValueError, match="over the limit of 1048576 bytes"):
        kc.set_mutable_local("k", "x" * (1024 * 1024 + 1))
    with pytest.raises(MutableValueError, match="not valid text: surrogates not allowed"):
        kc.set_mutable_local("k", "lone \ud800 surrogate")
    assert kc.get_mutable_local("k") == "kept"


@given(key=keys, value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50))  # no NUL in values
def test_any_valid_key_round_trips_and_stays_inside(key: str, value: str) -> None:
    path = _mutables.mutable_path(key)
    root = Path(kc.get_kachery_cloud_dir(), "mutables").resolve()
    assert root in path.resolve().parents
    kc.set_mutable_local(key, value)
    assert kc.get_mutable_local(key) == value


@given(st.text(max_size=30))
def test_key_validation_never_crashes(key: str) -> None:
    try:
        _mutables.validate_key(key)
    except InvalidMutableKeyError:
        return
    assert ".." not in key.split("/") and not key.startswith("/")
