"""Test that each role's argument_specs.yml documents exactly its defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = sorted(path.name for path in ROLES.iterdir() if path.is_dir())


def load_yaml(path: Path) -> dict[str, object]:
    """Return the mapping that the YAML file at ``path`` contains."""
    content = yaml.safe_load(path.read_text())
    assert isinstance(content, dict), f"{path} is not a mapping"
    return content


def test_every_role_found() -> None:
    assert ROLE_NAMES == ["client", "python_app", "redis", "server"]


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_specs_match_defaults(role: str) -> None:
    defaults = load_yaml(ROLES / role / "defaults" / "main.yml")
    specs = load_yaml(ROLES / role / "meta" / "argument_specs.yml")
    main = specs["argument_specs"]["main"]  # type: ignore[index]
    options = main["options"]

    assert sorted(options) == sorted(defaults)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_carry_role_prefix(role: str) -> None:
    defaults = load_yaml(ROLES / role / "defaults" / "main.yml")
    prefix = f"{role}_"
    # python_app is internal: every variable is set by the including role.
    if role == "python_app":
        prefix = "_python_app_"

    assert [name for name in defaults if not name.startswith(prefix)] == []
