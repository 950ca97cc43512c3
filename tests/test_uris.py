from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kachery_core as kc
from kachery_core.errors import InvalidURIError, UnknownURISchemeError

SHA1 = hashlib.sha1(b"x").hexdigest()
sha1s = st.binary(max_size=64).map(lambda b: hashlib.sha1(b).hexdigest())
abs_paths = st.lists(st.text(min_size=1).filter(lambda s: "/" not in s and "\x00" not in s), min_size=1).map(
    lambda parts: "/" + "/".join(parts)
)


@given(sha1=sha1s, label=st.one_of(st.none(), st.text()), location=st.one_of(st.none(), abs_paths))
def test_format_then_parse_round_trips(sha1: str, label: str | None, location: str | None) -> None:
    uri = kc.format_sha1_uri(sha1, label=label, location=location)
    parsed = kc.parse_sha1_uri(uri)
    assert parsed == kc.Sha1URI(sha1=sha1, label=label, location=location)
    assert str(parsed) == uri


@given(label=st.text())
def test_label_never_leaks_query_syntax(label: str) -> None:
    uri = kc.format_sha1_uri(SHA1, label=label)
    query = uri.split("?", 1)[1]
    assert query.count("=") == 1 and "&" not in query and "#" not in query


def test_known_uri_shapes() -> None:
    assert kc.format_sha1_uri(SHA1, label="a b.txt") == f"sha1://{SHA1}?label=a%20b.txt"
    parsed = kc.parse_sha1_uri(f"sha1://{SHA1}?label=x.npy&location=/data/x.npy")
    assert (parsed.label, parsed.location) == ("x.npy", "/data/x.npy")
    # kachery-cloud sometimes appended a file name after the hash
    assert kc.parse_sha1_uri(f"sha1://{SHA1}/file.txt").sha1 == SHA1
    # unknown query parameters from newer writers are ignored
    assert kc.parse_sha1_uri(f"sha1://{SHA1}?label=a&future=1").label == "a"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("sha1://1234", "'1234' is not a sha1"),
        ("sha1://" + "g" * 40, "is not a sha1"),
        ("sha1://" + SHA1.upper(), "lowercase"),
        ("sha1://", "is not a sha1"),
        ("sha1:" + SHA1, "expected sha1://"),
        (SHA1, "expected sha1://"),
        ("", "expected sha1://"),
        (f"sha1://{SHA1}?location=relative/path", "absolute path"),
        (f"sha1://{SHA1}?label", "malformed query"),
    ],
)
def test_malformed_uris_name_the_problem(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURIError) as info:
        kc.parse_sha1_uri(uri)
    assert fragment in str(info.value)
    assert info.value.uri == uri
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("scheme", ["ipfs", "http", "gh", "zenodo", "kachery-feed"])
def test_unknown_scheme_is_an_error_not_none(scheme: str) -> None:
    uri = f"{scheme}://{SHA1}"
    with pytest.raises(UnknownURISchemeError) as info:
        kc.load_file(uri)
    assert info.value.scheme == scheme
    assert uri in str(info.value)


def test_non_string_uri() -> None:
    with pytest.raises(InvalidURIError, match="expected a string"):
        kc.parse_sha1_uri(42)  # type: ignore[arg-type]


@given(st.text())
def test_parse_never_crashes_with_anything_but_invalid_uri(text: str) -> None:
    try:
        parsed = kc.parse_sha1_uri(text)
    except InvalidURIError:
        return
    assert len(parsed.sha1) == 40
