"""mlserve/spec/version.py: the one version parser, ASCII digits only, bounded, positive."""

from __future__ import annotations

import pytest

from mlserve.errors import InvalidInput
from mlserve.spec.version import MAX_VERSION, parse_version, version_number


@pytest.mark.parametrize("text, number", [("1", 1), ("42", 42), ("9" * 18, 10**18 - 1),
                                          ("9223372036854775807", 2**63 - 1)])
def test_plain_versions_parse(text, number):
    assert version_number(text) == number and parse_version(text) == number


@pytest.mark.parametrize("text", ["", "0", "01", "-1", "+1", " 1", "1.0", "²", "١", "１", "9223372036854775808", "9" * 19, "1" * 20,
                                  "1\x00", None, 1.0])
def test_anything_else_is_no_version(text):
    assert version_number(text) is None
    with pytest.raises(InvalidInput, match="is not a version"):
        parse_version(text)


def test_integers_are_taken_within_the_bound():
    assert parse_version(7) == 7
    for bad in (0, -3, True, MAX_VERSION + 1):
        with pytest.raises(InvalidInput):
            parse_version(bad)
