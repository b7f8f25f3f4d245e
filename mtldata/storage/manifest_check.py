"""The shape of a manifest.json as readers rely on it: every field they read, checked before use.

A manifest is input like any other file: valid JSON of the wrong shape must become one error naming
the file and the field, and paths it names (`files`, `errors.file`) must stay inside the dataset.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mtldata.errors import DatasetFormatError

# files.<name> values that are paths inside the dataset (a string, or a list of them for "shards")
PATH_FIELDS = ("images", "labels", "list", "errors")
PATH_LIST_FIELDS = ("shards",)

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def inside_path(value: Any) -> bool:
    """Whether `value` is a relative path that stays inside the folder it is relative to."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return False
    posix = PurePosixPath(value)
    return not (
        posix.is_absolute() or ".." in posix.parts or PureWindowsPath(value).drive or value.startswith("\\\\")
    )


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, field: str, expected: str, value: Any) -> None:
        raise DatasetFormatError(
            f"{self.file}: field {field!r} should be {expected}, got {_short.repr(value)}; "
            "not a manifest mtldata wrote (damaged or edited?)"
        )

    def table(self, doc: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
        value = doc.get(name)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.fail(name, "a JSON object", value)
        return value

    def path(self, field: str, value: Any) -> None:
        if not inside_path(value):
            self.fail(field, "a relative path inside the dataset (no '..', not absolute)", value)


def check_manifest(doc: Any, file: Path) -> None:
    """Raise DatasetFormatError naming `file` and the field unless `doc` has the shape readers rely on."""
    c = _Checker(Path(file))
    if not isinstance(doc, dict):
        c.fail("(top level)", "a JSON object", doc)
    if not isinstance(doc.get("backend"), str):
        c.fail("backend", "a backend name", doc.get("backend"))
    if not isinstance(doc.get("complete", False), bool):
        c.fail("complete", "true or false", doc.get("complete"))
    for name in ("count", "num_labels"):
        if not _is_int(doc.get(name)):
            c.fail(name, "an integer >= 0", doc.get(name))
    names = doc.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        c.fail("label_names", "a list of strings", names)
    image = c.table(doc, "image")
    shape = image.get("shape")
    if shape is not None and (
        not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(d, 1) for d in shape)
    ):
        c.fail("image.shape", "null or [C, H, W] of positive integers", shape)
    for name in ("shapes", "formats"):
        table = image.get(name) or {}
        if not isinstance(table, dict) or not all(_is_int(n) for n in table.values()):
            c.fail(f"image.{name}", "an object of counts", table)
    if not isinstance(image.get("encoded", False), bool):
        c.fail("image.encoded", "true or false", image.get("encoded"))
    files = c.table(doc, "files")
    for name in PATH_FIELDS:
        if name in files:
            c.path(f"files.{name}", files[name])
    for name in PATH_LIST_FIELDS:
        if name in files:
            if not isinstance(files[name], list):
                c.fail(f"files.{name}", "a list of relative paths", files[name])
            for j, entry in enumerate(files[name]):
                c.path(f"files.{name}[{j}]", entry)
    errors = c.table(doc, "errors")
    if not _is_int(errors.get("count")):
        c.fail("errors.count", "an integer >= 0", errors.get("count"))
    if errors.get("file") is not None and not isinstance(errors["file"], str):
        c.fail("errors.file", "a file name", errors["file"])
    if errors.get("file") and not inside_path(errors["file"]):
        # refused, not just left unread: merge and verify would otherwise name (or read) a file
        # outside the dataset
        raise DatasetFormatError(
            f"{c.file}: errors.file {_short.repr(errors['file'])} points outside the dataset (absolute "
            "or climbing out with '..'); not a manifest mtldata wrote (damaged or edited?)"
        )
    if not isinstance(errors.get("first", []), list):
        c.fail("errors.first", "a list", errors.get("first"))
    stats = doc.get("label_stats")
    if not isinstance(stats, list):
        c.fail("label_stats", "a list of per-label objects", stats)
    for j, entry in enumerate(stats):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            c.fail(f"label_stats[{j}]", "an object with a name", entry)
        for key in ("min", "max", "mean"):
            if entry.get(key) is not None and not _is_number(entry.get(key)):
                c.fail(f"label_stats[{j}].{key}", "a number or null", entry.get(key))
        values = entry.get("values")
        if values is not None and (not isinstance(values, list) or not all(_is_number(v) for v in values)):
            c.fail(f"label_stats[{j}].values", "null or a list of numbers", values)
        if not isinstance(entry.get("integral", False), bool):
            c.fail(f"label_stats[{j}].integral", "true or false", entry.get("integral"))
    source = c.table(doc, "source")
    for name in ("list_file", "list_sha256"):
        if name in source and not isinstance(source[name], str):
            c.fail(f"source.{name}", "a string", source[name])
    if "data_lines" in source and not _is_int(source["data_lines"]):
        c.fail("source.data_lines", "an integer >= 0", source["data_lines"])
    c.table(doc, "options")
    c.table(doc, "checksums", required=False)
    shard = doc.get("shard")
    if shard is not None:
        if (
            not isinstance(shard, dict)
            or not _is_int(shard.get("index"))
            or not _is_int(shard.get("count"), 1)
        ):
            c.fail("shard", "null or {index, count, positions}", shard)
        positions = shard.get("positions")
        if not (isinstance(positions, list) and len(positions) == 2 and all(_is_int(p) for p in positions)):
            c.fail("shard.positions", "[start, stop]", positions)


def finite_or_none(value: Any) -> float | None:
    """A manifest number as a finite float, or None (NaN, inf, not a number)."""
    return float(value) if _is_number(value) and math.isfinite(value) else None
