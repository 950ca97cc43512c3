"""Numbers in the hub's environment: read the same way, and a bad one names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kachery_hub import Settings
from kachery_hub._settings import (
    ENV_BODY_TIMEOUT,
    ENV_MAX_CLOCK_SKEW,
    ENV_MAX_INFLIGHT_BODY_BYTES,
    ENV_RATE_LIMIT,
)
from kachery_hub.errors import ConfigurationError

# variable -> (field, a good value as text, that value, values it refuses besides those all refuse)
NUMBERS = {
    ENV_MAX_CLOCK_SKEW: ("max_clock_skew_seconds", "60.5", 60.5, ("0", "-1")),
    ENV_RATE_LIMIT: ("rate_limit_per_minute", "120", 120.0, ("-1",)),
    ENV_MAX_INFLIGHT_BODY_BYTES: ("max_inflight_body_bytes", "134217728", 134217728, ("0", "1024", "-1", "1e9", "2.5")),
    ENV_BODY_TIMEOUT: ("body_read_timeout_seconds", "5", 5.0, ("0", "-1")),
}
# Not numbers, not finite, or digits other than ASCII ones (which str.isdigit() and float() accept).
REFUSED_BY_ALL = ("many", "nan", "inf", "-inf", "1e400", "²³", "٣٠", "3 0", "0x10", "1_000")


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_each_number_variable_is_read_and_a_bad_value_names_it(name: str, tmp_path: Path) -> None:
    field, good, value, refused = NUMBERS[name]
    env = {"KACHERY_HUB_DATA": str(tmp_path)}
    default = getattr(Settings(data_dir=tmp_path), field)
    assert getattr(Settings.from_environ(env), field) == default
    assert getattr(Settings.from_environ({**env, name: ""}), field) == default  # empty: as if unset
    read = getattr(Settings.from_environ({**env, name: f" {good} "}), field)
    assert read == value and type(read) is type(value)
    for bad in (*REFUSED_BY_ALL, *refused):
        with pytest.raises(ConfigurationError, match=name) as refusal:
            Settings.from_environ({**env, name: bad})
        assert repr(bad.strip()) in str(refusal.value) or field in str(refusal.value), (bad, str(refusal.value))


def test_zero_turns_the_rate_limit_off(tmp_path: Path) -> None:
    assert Settings.from_environ({"KACHERY_HUB_DATA": str(tmp_path), ENV_RATE_LIMIT: "0"}).rate_limit_per_minute == 0
