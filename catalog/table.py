"""A catalog table's definition: its columns with Arrow types and descriptions (catalog/schema.py
and catalog/schema_stats.py define the tables)."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    zone: str  # research | restricted
    key: tuple[str, ...]
    description: str
    columns: tuple[Column, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.type, metadata={"description": c.description}) for c in self.columns],
            metadata={"table": self.name, "description": self.description},
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


S, I, F, B, D, TS = pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.date32(), pa.timestamp("us", tz="UTC")
