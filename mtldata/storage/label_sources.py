"""Where a conversion's labels come from: one list, one CSV, or several of them joined on the image path.

A single whitespace list streams as before. A CSV, or several sources, are read whole: each source's
label columns are named (CSV header, or a list's `# path name...` line) and the sources are joined on
the image path. The samples come in the first source's order, then the paths only later sources name,
in the order they first appear; a cell no source fills is a missing label (NaN), allowed only with
`allow_missing`. `columns` then picks and orders label columns by name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtldata.errors import InputError, MtlDataError
from mtldata.storage.csvlist import is_csv, read_csv_labels
from mtldata.storage.listfile import (
    ListEntry,
    ListLineError,
    ListSummary,
    header_names,
    iter_list,
    summarize_list,
)

Item = ListEntry | ListLineError


@dataclass(frozen=True)
class LabelInput:
    """The samples to convert (re-iterable) with what the manifest records about where they came from."""

    summary: ListSummary
    names: tuple[str, ...]  # label names the sources give (header lines), or ()
    entries: Callable[[], Iterator[Item]]
    sources: tuple[str, ...]


def _select(names: tuple[str, ...], columns: Sequence[str], where: str) -> list[int]:
    """Indices of `columns` among `names`, or an error naming what is there."""
    picked = []
    for name in columns:
        if name not in names:
            raise MtlDataError(
                f"{where}: --columns names {name!r}, which is not a label column ({', '.join(names)})"
            )
        picked.append(names.index(name))
    if len(set(picked)) != len(picked):
        raise MtlDataError(f"--columns names a column twice: {', '.join(columns)}")
    return picked


def _picked(items: Iterator[Item], picked: list[int] | None) -> Iterator[Item]:
    for item in items:
        if picked is not None and isinstance(item, ListEntry):
            item = ListEntry(item.line, item.path, tuple(item.labels[j] for j in picked))
        yield item


def open_labels(
    sources: Sequence[Path],
    *,
    num_labels: int | None = None,
    allow_missing: bool = False,
    path_column: str | None = None,
    columns: Sequence[str] = (),
    path_exists: Callable[[str], bool] | None = None,
) -> LabelInput:
    """Read the label sources of a conversion (see the module docstring)."""
    if not sources:
        raise MtlDataError("no label source: give a list or CSV file (or --labels-from)")
    for source in sources:
        if not Path(source).is_file():
            raise MtlDataError(f"{source}: no such list file")
    if len(sources) == 1 and not is_csv(sources[0]):
        return _single_list(Path(sources[0]), num_labels, allow_missing, columns, path_exists)
    tables = [
        _table(Path(s), allow_missing, path_column, path_exists, joined=len(sources) > 1) for s in sources
    ]
    return _join(tables, num_labels, allow_missing, columns)


def _single_list(
    path: Path,
    num_labels: int | None,
    allow_missing: bool,
    columns: Sequence[str],
    path_exists: Callable[[str], bool] | None,
) -> LabelInput:
    try:
        summary = summarize_list(path, num_labels)
    except ValueError as exc:
        raise MtlDataError(str(exc)) from exc
    names = header_names(path) or ()
    if names and len(names) != summary.num_labels:
        raise InputError(
            path, 1, f"the header names {len(names)} labels but the lines hold {summary.num_labels}"
        )
    picked = None
    full_k = summary.num_labels
    if columns:
        if not names:
            raise MtlDataError(
                f"{path}: --columns needs label names: start the list with `# path name1 name2 ...`"
            )
        picked = _select(names, columns, str(path))
        names = tuple(names[j] for j in picked)
        summary = ListSummary(summary.sha256, summary.num_lines, len(picked), summary.inferred)

    def entries() -> Iterator[Item]:
        return _picked(iter_list(path, full_k, path_exists, allow_missing), picked)

    return LabelInput(summary=summary, names=names, entries=entries, sources=(str(path),))


@dataclass(frozen=True)
class _Table:
    path: Path
    names: tuple[str, ...]
    rows: tuple[Item, ...]
    sha256: str


def _table(
    path: Path,
    allow_missing: bool,
    path_column: str | None,
    path_exists: Callable[[str], bool] | None,
    joined: bool,
) -> _Table:
    if is_csv(path):
        parsed = read_csv_labels(path, path_column=path_column, allow_missing=allow_missing)
        return _Table(path, parsed.names, parsed.rows, parsed.sha256)
    names = header_names(path)
    if names is None:
        raise MtlDataError(
            f"{path}: a list joined with other sources needs a first line `# path name1 name2 ...` naming its labels"
        )
    try:
        summary = summarize_list(path, len(names))
    except ValueError as exc:
        raise MtlDataError(str(exc)) from exc
    rows = tuple(iter_list(path, len(names), path_exists, allow_missing))
    return _Table(path, names, rows, summary.sha256)


def _join(
    tables: list[_Table], num_labels: int | None, allow_missing: bool, columns: Sequence[str]
) -> LabelInput:
    owner: dict[str, Path] = {}
    for table in tables:
        for name in table.names:
            if name in owner:
                raise MtlDataError(f"label column {name!r} comes from both {owner[name]} and {table.path}")
            owner[name] = table.path
    names = tuple(owner)
    joined = len(tables) > 1
    # path -> (line, values so far); the first source's paths first, then new paths as they appear
    rows: dict[str, tuple[int, list[float]]] = {}
    offset = 0
    for table in tables:
        width = len(table.names)
        seen: dict[str, int] = {}
        for item in table.rows:
            if isinstance(item, ListLineError):
                if joined:  # a line number only means something in its own file
                    raise InputError(table.path, item.line, item.reason)
                continue
            if item.path in seen:
                raise InputError(table.path, item.line, f"{item.path}: already on line {seen[item.path]}")
            seen[item.path] = item.line
            if item.path not in rows:
                rows[item.path] = (item.line, [math.nan] * len(names))
            rows[item.path][1][offset : offset + width] = item.labels
        offset += width
    if not allow_missing and joined:
        paths = [{r.path for r in t.rows if isinstance(r, ListEntry)} for t in tables]
        for image in rows:
            if (
                lacking := next((t for t, p in zip(tables, paths, strict=True) if image not in p), None)
            ) is not None:
                raise InputError(
                    lacking.path,
                    None,
                    f"no row for {image!r}; pass --allow-missing to store its labels as missing",
                )
    picked = _select(names, columns, str(tables[0].path)) if columns else None
    if picked is not None:
        names = tuple(names[j] for j in picked)
    k = len(names)
    if num_labels is not None and num_labels != k:
        raise MtlDataError(
            f"--num-labels is {num_labels} but the sources have {k} label columns ({', '.join(names)})"
        )
    # errors of a single source keep their place among its rows (output order = file order)
    ordered: list[Item] = []
    if joined:
        ordered = [ListEntry(line, image, tuple(values)) for image, (line, values) in rows.items()]
    else:
        by_line = {line: image for image, (line, _) in rows.items()}
        for item in tables[0].rows:
            if isinstance(item, ListLineError):
                ordered.append(item)
            elif by_line.get(item.line) == item.path:
                ordered.append(ListEntry(item.line, item.path, tuple(rows[item.path][1])))
    items = tuple(_picked(iter(ordered), picked))
    digest = hashlib.sha256()
    for table in tables:
        digest.update(f"{table.path.name}\0{table.sha256}\n".encode())
    sha = tables[0].sha256 if not joined else digest.hexdigest()
    summary = ListSummary(sha256=sha, num_lines=len(items), num_labels=k, inferred=False)
    return LabelInput(
        summary=summary, names=names, entries=lambda: iter(items), sources=tuple(str(t.path) for t in tables)
    )
