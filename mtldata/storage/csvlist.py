"""CSV and TSV label files with a header: one row per image, a path column and named label columns.

The header names the columns; the path column is `path_column` (default the first) and every other
column is a label. Cells are decimal numbers; an empty cell, `nan` or `NA` is a missing label (NaN)
when `allow_missing`, else an error. Quoted fields (commas, quotes, newlines inside), a UTF-8 BOM and
CRLF endings are read as the csv module reads them; a row's line is the line it starts on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtldata.errors import InputError
from mtldata.storage.listfile import ListEntry, ListLineError, is_missing_token

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT32_EXACT_INT = 2**24
_INT32_MAX = 2**31 - 1
MAX_FIELD = 1 << 16  # a cell longer than this is an error, not a 128 KiB (csv's default) allocation


def is_csv(path: str | Path) -> bool:
    """A label file read as CSV (`.csv`) or TSV (`.tsv`, `.tab`) rather than as a whitespace list."""
    return Path(path).suffix.lower() in CSV_SUFFIXES


@dataclass(frozen=True)
class CsvLabels:
    """A parsed CSV: label names, data rows (entries or line errors) in file order, and the sha256."""

    path: Path
    names: tuple[str, ...]
    rows: tuple[ListEntry | ListLineError, ...]
    sha256: str


def parse_cell(token: str, column: str, allow_missing: bool) -> float | str:
    """One label cell as a float (NaN when missing and allowed), or the reason it is not one."""
    token = token.strip()
    if is_missing_token(token):
        if allow_missing:
            return math.nan
        what = "empty" if not token else f"missing ({token!r})"
        return f"column {column!r}: {what}; pass --allow-missing to store missing labels"
    if _NUMBER.fullmatch(token) is None:
        return f"column {column!r}: not a number: {token!r}"
    value = float(token)
    if not math.isfinite(float(np.float32(value))):
        return f"column {column!r}: {token} overflows float32"
    if re.fullmatch(r"[+-]?\d+", token) and abs(int(token)) > _FLOAT32_EXACT_INT:
        return f"column {column!r}: {token} is an integer float32 cannot hold exactly"
    return value


def _records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str] | str]]:
    """(first line, fields) of each record, or (line, reason) for a record the csv module rejects."""
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        start = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise InputError(path, reader.line_num + 1, "not valid UTF-8") from None
            except csv.Error as exc:
                # a broken quote swallows the rest of the file: nothing after it can be trusted
                raise InputError(path, start, f"not valid CSV ({exc})") from None
            if any(len(f) > MAX_FIELD for f in fields):
                raise InputError(path, start, f"a field is longer than {MAX_FIELD} characters")
            yield start, fields
            start = reader.line_num + 1


def read_csv_labels(
    path: str | Path,
    *,
    path_column: str | None = None,
    allow_missing: bool = False,
) -> CsvLabels:
    """Parse a CSV/TSV label file; a bad header is an InputError, a bad row a ListLineError."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    records = _records(path, CSV_SUFFIXES.get(path.suffix.lower(), ","))
    header: list[str] | None = None
    for _, fields in records:
        if fields and any(f.strip() for f in fields):
            header = [f.strip() for f in fields]
            break
    if header is None:
        raise InputError(path, None, "no header line (the first row must name the columns)")
    if path_column is None:
        path_index = 0
    elif header.count(path_column) == 1:
        path_index = header.index(path_column)
    else:
        found = "no" if path_column not in header else "more than one"
        raise InputError(
            path, 1, f"--path-column {path_column!r}: the header has {found} column of that name"
        )
    names = tuple(h for j, h in enumerate(header) if j != path_index)
    if not names:
        raise InputError(path, 1, "the header names no label columns besides the path")
    seen: dict[str, int] = {}
    for j, name in enumerate(header, start=1):
        if not name:
            raise InputError(path, 1, f"column {j} has no name")
        if name in seen:
            raise InputError(path, 1, f"duplicate column name {name!r} (columns {seen[name]} and {j})")
        seen[name] = j
    rows: list[ListEntry | ListLineError] = []
    for line, fields in records:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        text = ",".join(fields)
        if len(fields) != len(header):
            rows.append(ListLineError(line, text, f"expected {len(header)} fields, found {len(fields)}"))
            continue
        image = fields[path_index].strip()
        if not image:
            rows.append(ListLineError(line, text, f"column {header[path_index]!r}: empty path"))
            continue
        values: list[float] = []
        for j, cell in enumerate(fields):
            if j == path_index:
                continue
            value = parse_cell(cell, header[j], allow_missing)
            if isinstance(value, str):
                rows.append(ListLineError(line, text, value))
                break
            values.append(value)
        else:
            if abs(values[0]) > _INT32_MAX:
                rows.append(
                    ListLineError(line, text, f"column {names[0]!r}: does not fit the Datum's int32 label")
                )
                continue
            rows.append(ListEntry(line=line, path=image, labels=tuple(values)))
    return CsvLabels(path=path, names=names, rows=tuple(rows), sha256=digest.hexdigest())
