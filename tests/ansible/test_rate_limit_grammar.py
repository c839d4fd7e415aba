"""Test that the server role's preflight and server_app accept the same limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server_app.config import ConfigError, parse_rate_limit

SERVER_VARS = Path(__file__).resolve().parents[2] / "roles/server/vars/main.yml"


def preflight_pattern() -> re.Pattern[str]:
    """Build the regular expression that the preflight's Jinja template renders."""
    role_vars = yaml.safe_load(SERVER_VARS.read_text())
    pattern = role_vars["_server_rate_limit_pattern"]
    # The pattern is built from other role variables, each inserted as
    # "{{ name }}"; substitute them until none is left.
    reference = re.compile(r"\{\{ (_server_rate_limit_\w+) \}\}")
    while reference.search(pattern):
        pattern = reference.sub(lambda match: role_vars[match.group(1)], pattern)
    return re.compile(pattern, re.IGNORECASE)


def server_accepts(value: str) -> bool:
    """Return whether server_app's configuration accepts RATE_LIMIT=value."""
    try:
        parse_rate_limit(value)
    except ConfigError:
        return False
    return True


LIMITS = [
    ("5/10minute", True),
    ("5/minute", True),
    ("100 per day", True),
    ("2/seconds", True),
    ("1 PER 2 Hours", True),
    ("10/hour;1000/day", True),
    ("1/month,5/year|3/minute", True),
    (" 5 / 10 minute ", True),
    ("05/010minute", True),
    ("5/10min", False),
    ("5 10minute", False),
    ("5/10minutes/", False),
    ("0/minute", False),
    ("5/0minute", False),
    ("five/minute", False),
    ("-5/minute", False),
    ("5/fortnight", False),
    ("5/minute;", False),
    ("", False),
]


@pytest.mark.parametrize(("limit", "valid"), LIMITS)
def test_preflight_matches_server(limit: str, valid: bool) -> None:
    assert server_accepts(limit) is valid
    assert (preflight_pattern().match(limit) is not None) is valid
