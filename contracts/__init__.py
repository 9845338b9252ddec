"""edgeflag contracts: the data shapes every component speaks, defined once.

This package imports nothing else of ours. Each contract carries a schema
version; docs/contracts.md documents every field.
"""

from contracts.block import ReadingBlock
from contracts.errors import ContractError
from contracts.manifest import MANIFEST_SCHEMA, ModelManifest
from contracts.reading import READING_SCHEMA, Reading, format_ts, parse_ts
from contracts.telemetry import (
    MAX_MESSAGE_BYTES,
    TELEMETRY_SCHEMA,
    ModelLineage,
    ScoredReading,
    TelemetryMessage,
)

__all__ = [
    "MANIFEST_SCHEMA",
    "MAX_MESSAGE_BYTES",
    "READING_SCHEMA",
    "TELEMETRY_SCHEMA",
    "ContractError",
    "ModelLineage",
    "ModelManifest",
    "Reading",
    "ReadingBlock",
    "ScoredReading",
    "TelemetryMessage",
    "format_ts",
    "parse_ts",
]
