"""Query output: an Arrow result as a table for people, or as CSV or JSON lines that keep every value exact.

CSV and JSON are for programs: integers stay integers (int64 nanosecond times included), doubles are
written with Python's shortest round-trip repr, sums of integers (DuckDB's HUGEINT, a 38-digit decimal)
as integers, decimals as their exact digits, timestamps as ISO-8601 with every fractional digit they have.
JSON has no NaN or infinity: those are written as null. The table is for people: int64 instants of the
lake (``data_feed.contracts.schemas.INSTANT_COLUMNS``) are shown as UTC timestamps, NULL as ``NULL``, and it is never
cut to the terminal's width; at most ``max_rows`` rows are shown, with a note of how many were not.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from data_feed.contracts.instants import format_instant, fraction_digits
from data_feed.contracts.schemas import INSTANT_COLUMNS

NULL_TEXT = "NULL"
COLUMN_GAP = "  "
DEFAULT_MAX_ROWS = 1000
_AGGREGATE_OF_INSTANT = re.compile(r"^(?:min|max|first|last|any_value|arbitrary)\((\w+)\)$")
_UNIT_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}

Texts = list[str | None]  # one column's cells as text; None = NULL


def is_instant_column(name: str, typ: pa.DataType) -> bool:
    """An int64 column holding lake instants: a schema's instant column, or min/max/... of one."""
    match = _AGGREGATE_OF_INSTANT.match(name)
    return pa.types.is_integer(typ) and (name in INSTANT_COLUMNS or bool(match and match[1] in INSTANT_COLUMNS))


def _plain(value: Any) -> Any:
    """A value JSON can hold exactly: integral decimals as ints, NaN and infinities as None."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _timestamp_texts(column: pa.ChunkedArray) -> Texts:
    """ISO-8601 texts of a timestamp column, every fractional digit of its unit; ``Z`` when zoned (UTC)."""
    typ = column.type
    suffix = "Z" if typ.tz is not None else ""
    try:
        ints = pc.cast(column, pa.int64()).to_pylist()
    except pa.ArrowInvalid:
        return [None if v is None else str(v) for v in column.to_pylist()]
    scale = 10 ** (9 - _UNIT_DIGITS[typ.unit])
    digits = _UNIT_DIGITS[typ.unit]
    return [None if v is None else format_instant(v * scale, digits).removesuffix("Z") + suffix for v in ints]


def _decimal_texts(column: pa.ChunkedArray) -> Texts:
    if column.type.scale == 0:
        return [None if v is None else str(int(v)) for v in column.to_pylist()]
    return [None if v is None else str(v) for v in column.to_pylist()]


def _float_text(value: float) -> str:
    return repr(value) if math.isfinite(value) else {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]


def column_texts(column: pa.ChunkedArray, instants: bool = False) -> Texts:
    """Each cell of ``column`` as exact text (None for NULL); ``instants``: int64 ns shown as UTC timestamps."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        return _timestamp_texts(column)
    if pa.types.is_decimal(typ):
        return _decimal_texts(column)
    values = column.to_pylist()
    if instants:
        digits = fraction_digits([v for v in values if v is not None])
        return [None if v is None else format_instant(v, digits) for v in values]
    if pa.types.is_floating(typ):
        return [None if v is None else _float_text(v) for v in values]
    if pa.types.is_boolean(typ):
        return [None if v is None else ("true" if v else "false") for v in values]
    if pa.types.is_nested(typ):
        return [None if v is None else json.dumps(_plain(v)) for v in values]
    if pa.types.is_date(typ):
        return [None if v is None else v.isoformat() for v in values]
    return [None if v is None else str(v) for v in values]


def write_csv(table: pa.Table, out: TextIO) -> None:
    """CSV with a header; NULL is an empty field, every other value exact."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    columns = [column_texts(col) for col in table.columns]
    writer.writerows(zip(*columns, strict=True))


def _json_texts(column: pa.ChunkedArray) -> list[str]:
    typ = column.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        exact = column_texts(column)
        nan = pa.types.is_floating(typ)
        return ["null" if v is None or (nan and not _finite(v)) else v for v in exact]
    if pa.types.is_timestamp(typ):
        return ["null" if v is None else json.dumps(v) for v in _timestamp_texts(column)]
    return [json.dumps(_plain(v)) for v in column.to_pylist()]


def _finite(text: str) -> bool:
    return text not in ("NaN", "Infinity", "-Infinity")


def write_json(table: pa.Table, out: TextIO) -> None:
    """One JSON object per row (JSON lines), keys in column order, every number exact."""
    keys = [json.dumps(name) + ": " for name in table.column_names]
    columns = [_json_texts(col) for col in table.columns]
    for row in zip(*columns, strict=True):
        out.write("{" + ", ".join(k + v for k, v in zip(keys, row, strict=True)) + "}\n")


def _right_aligned(typ: pa.DataType) -> bool:
    return bool(pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ))


def write_table(table: pa.Table, out: TextIO, max_rows: int | None = DEFAULT_MAX_ROWS) -> None:
    """Aligned columns under a header, never cut to a width; at most ``max_rows`` rows (None: all)."""
    shown = table if max_rows is None else table.slice(0, max_rows)
    cells: list[list[str]] = []
    aligns: list[Callable[[str, int], str]] = []
    for name, col in zip(shown.column_names, shown.columns, strict=True):
        instants = is_instant_column(name, col.type)
        cells.append([name, *(NULL_TEXT if v is None else v for v in column_texts(col, instants))])
        right = _right_aligned(col.type) and not instants
        aligns.append(str.rjust if right else str.ljust)
    widths = [max(map(len, c)) for c in cells]
    rule = [["-" * w for w in widths]]
    rows = zip(*cells, strict=True)
    header = next(rows, None)
    if header is None:
        return
    for row in [list(header), *rule, *rows]:
        line = COLUMN_GAP.join(a(v, w) for a, v, w in zip(aligns, row, widths, strict=True))
        out.write(line.rstrip() + "\n")
    hidden = table.num_rows - shown.num_rows
    if hidden:
        out.write(f"({hidden:,} more rows not shown; --max-rows 0 shows all, --format csv or json for programs)\n")
    elif table.num_rows == 0:
        out.write("(no rows)\n")
