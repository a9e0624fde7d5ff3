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


def _settings_row(variable: str) -> str:
    (row,) = [line for line in README.splitlines() if line.startswith(f"| `{variable}` |")]
    return row


def _written_forms(bound: float) -> set[str]:
    """How the README may write a bound: 10000, 10,000, 10 MiB, ten years (the future skew's)."""
    forms = {f"{bound:g}", f"{bound:,}"}
    if bound >= 2**20 and bound % 2**20 == 0:
        forms.add(f"{bound // 2**20:g} MiB")
    if bound == 10 * 365 * 86_400:
        forms.add("ten years")
    return forms


def _says(row: str, bound: float) -> bool:
    """Whether the row writes the bound as a number of its own (1000 is not in 10000)."""
    return any(
        re.search(rf"(?<![\d.,]){re.escape(form)}(?!\d|[.,]\d)", row) for form in _written_forms(bound)
    )


def test_every_bound_of_a_setting_is_in_its_readme_row() -> None:
    """A value outside a bound stops the command: the table says where each bound is (a count's least value, 1,
    and the zero of a time or a fraction aside: their meaning says them)."""
    unsaid = []
    for name, field in Settings.model_fields.items():
        row = _settings_row(env_var_name(name))
        for constraint in field.metadata:
            for kind in ("ge", "gt", "le", "lt"):
                bound = getattr(constraint, kind, None)
                implied = bound == 0 or (kind == "ge" and bound == 1 and isinstance(bound, int))
                if bound is not None and not implied and not _says(row, bound):
                    unsaid.append(f"{env_var_name(name)} {kind} {bound}")
    assert unsaid == []


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


def _column_table(heading: str) -> dict[str, str]:
    """The README's column table under the heading that starts with ``heading``: each column it names, and its type
    as written (``a``, ``b`` with ``string, int64`` pairs them; ``_90d`` after ``x_30d`` is ``x_90d``)."""
    lines = README.split(f"\n{heading}", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0].splitlines()
    columns: dict[str, str] = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        names = [names[0].rsplit("_", 1)[0] + name if name.startswith("_") else name for name in names]
        types = cells[1].split(", ") if ", " in cells[1] else [cells[1]] * len(names)
        columns.update(zip(names, types, strict=True))
    return columns


def _written_type(kind: object) -> str:
    import pyarrow as pa

    assert isinstance(kind, pa.DataType)
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_decimal(kind):
        return f"decimal({kind.precision},{kind.scale})"
    return {"double": "float64"}.get(str(kind), str(kind))


def test_every_output_column_is_in_its_readme_table_with_its_type() -> None:
    """Analysts read the column tables: a column missing there (events/ had no table) or a type written wrong
    misleads them, and a documented column the output lacks sends them after nothing."""
    from schemas import CLV_SCORES_SCHEMA, CUSTOMER_AGGREGATES_SCHEMA, EVENTS_SCHEMA

    for heading, schema in (
        ("### `events/` columns", EVENTS_SCHEMA),
        ("### `customer_aggregates` columns", CUSTOMER_AGGREGATES_SCHEMA),
        ("### clv/ columns", CLV_SCORES_SCHEMA),
    ):
        documented = _column_table(heading)
        assert sorted(documented) == sorted(schema.names), heading
        wrong = {
            field.name: (documented[field.name], _written_type(field.type))
            for field in schema
            if not documented[field.name].startswith(_written_type(field.type))
        }
        assert wrong == {}, heading
