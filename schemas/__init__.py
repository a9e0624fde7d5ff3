"""The data contract: the input event schema and the Arrow/Parquet schema of every output, in one place.

Nothing here talks to AWS. Column names and types are the contract that Redshift, the CLV notebooks and the
acceptance tests rely on; change them only together with the schema version and the README's column tables.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.contract import (
        CLV_SCORES_SCHEMA,
        CUSTOMER_AGGREGATES_SCHEMA,
        ERRORS_SCHEMA,
        EVENT_SCHEMA_PATH,
        EVENT_SCHEMA_VERSION,
        EVENT_TYPES,
        EVENTS_SCHEMA,
        MONEY,
        RAW_RECORD_SCHEMA,
        UTC_MICROS,
        load_event_json_schema,
    )

__all__ = [
    "CLV_SCORES_SCHEMA",
    "CUSTOMER_AGGREGATES_SCHEMA",
    "ERRORS_SCHEMA",
    "EVENTS_SCHEMA",
    "EVENT_SCHEMA_PATH",
    "EVENT_SCHEMA_VERSION",
    "EVENT_TYPES",
    "MONEY",
    "RAW_RECORD_SCHEMA",
    "UTC_MICROS",
    "load_event_json_schema",
]


def __getattr__(name: str) -> Any:
    """The contract's names, imported on first use: ``pyarrow`` (about 0.2 s) only when an Arrow schema is asked
    for, not by every command that imports ``schemas.layout`` (``clickstream health``, every 30 s)."""
    if name in __all__:
        from schemas import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
