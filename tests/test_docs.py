"""The README is the front door: every setting and every command it promises must exist, and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

from clickstream.cli import main
from consumer.metrics import UNITS
from runtime.settings import Settings, env_var_name, known_variables

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        env_var_name(name) for name in Settings.model_fields if f"`{env_var_name(name)}`" not in README
    ]
    assert missing == []


def test_every_documented_clickstream_variable_is_read_by_something() -> None:
    documented = set(re.findall(r"`(CLICKSTREAM_[A-Z_]+)`", README))
    assert documented - known_variables() == set()


def test_the_readme_does_not_point_at_documents_the_repository_lacks() -> None:
    root = Path(__file__).parent.parent
    for path in [root / "README.md", *(root / "runtime").glob("*.py"), *(root / "consumer").glob("*.py")]:
        for name in re.findall(r"\b([A-Z][A-Z0-9-]+\.md)\b", path.read_text(encoding="utf-8")):
            assert list(root.rglob(name)), f"{path.name} points at {name}, which is not in the repository"


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    documented = set(re.findall(r"`clickstream ([a-z]+)", README))
    assert set(main.commands) <= documented
    assert documented <= set(main.commands)


def test_every_metric_is_documented_with_a_unit() -> None:
    for name, unit in UNITS.items():
        row = next((line for line in README.splitlines() if f"`{name}`" in line), None)
        assert row is not None, name
        assert unit in row, (name, unit)
