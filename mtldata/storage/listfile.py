"""Image list files: `<path> <l1> ... <lK>` lines -> samples with line-numbered errors.

The labels are the last K whitespace-separated tokens and the path is everything before them, so
paths may contain spaces (convert_imageset splits at the last space for the same reason). K comes
from the caller or is inferred from the first data line. Blank lines and `#` comments are skipped;
CRLF endings and a UTF-8 BOM are accepted. A first line `# path name1 ... nameK` names the labels.
With `allow_missing`, a label written `nan` or `NA` (any case) is missing and becomes NaN.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A decimal number as a list file may hold it: no underscores, hex or words (float() accepts them).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_NONFINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_TOKEN = re.compile(r"\S+")
_MISSING = re.compile(r"nan|na", re.IGNORECASE)  # how a list or CSV writes a missing label
# float32 holds every integer up to 2**24 exactly; labels beyond that would silently change.
_FLOAT32_EXACT_INT = 2**24
_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Byte-order marks of encodings a list may be saved in by mistake (Windows tools write UTF-16).
_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


@dataclass(frozen=True)
class ListEntry:
    """One data line of a list file: where it is, the image path and its label vector."""

    line: int
    path: str
    labels: tuple[float, ...]


@dataclass(frozen=True)
class ListLineError:
    """A data line that cannot become a sample, with the reason."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class ListSummary:
    """What a first pass over a list file learns: its checksum, data-line count and K."""

    sha256: str
    num_lines: int
    num_labels: int
    inferred: bool


def _quote(text: str, limit: int = 80) -> str:
    """The line as a message quotes it: stripped, and cut when long."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _is_number(token: str) -> bool:
    return _NUMBER.fullmatch(token) is not None


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text) with BOM and line endings removed; text is None if not UTF-8."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
            yield number, text.rstrip("\r\n").rstrip("\r")


def _is_data_line(text: str | None) -> bool:
    if text is None:
        return True
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


def infer_num_labels(text: str) -> int:
    """K for a list whose first data line is `text`: the count of trailing numeric tokens.

    Counting numbers from the end (rather than tokens after the first) keeps paths with spaces
    working; at least one token is always left for the path.
    """
    tokens = text.split()
    k = 0
    for token in reversed(tokens[1:]):
        if not (_is_number(token) or _NONFINITE.fullmatch(token) or _MISSING.fullmatch(token)):
            break
        k += 1
    return k


def _check_encoding(path: Path, head: bytes) -> None:
    """Name a list saved as UTF-16/32 as such (else every line would be "not valid UTF-8")."""
    wide = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if wide is None and len(head) >= 4 and head.count(0) * 4 >= len(head):
        wide = "UTF-16 or UTF-32 (no byte-order mark)"  # ASCII text in a wide encoding: half NULs
    if wide is not None:
        raise ValueError(f"{path}: the list is {wide} encoded; save it as UTF-8 (or ASCII) text")


def summarize_list(path: str | Path, num_labels: int | None = None) -> ListSummary:
    """First pass: sha256 of the file, number of data lines, and K (given or inferred)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(4096)
        _check_encoding(path, head)
        digest.update(head)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    count = 0
    k = num_labels
    inferred = False
    for _, text in _decoded_lines(path):
        if not _is_data_line(text):
            continue
        count += 1
        if k is None and text is not None:
            k = infer_num_labels(text)
            inferred = True
    if k is None or k < 1:
        where = "its first data line has no numeric labels" if count else "it has no data lines"
        raise ValueError(f"{path}: cannot tell the number of labels: {where}; pass --num-labels")
    return ListSummary(sha256=digest.hexdigest(), num_lines=count, num_labels=k, inferred=inferred)


def is_missing_token(token: str) -> bool:
    """True for how a label file writes a missing value: `nan`, `NA` (any case) or nothing."""
    return not token or _MISSING.fullmatch(token) is not None


def header_names(path: str | Path) -> tuple[str, ...] | None:
    """The label names of a `# path name1 ... nameK` first line, or None when the list has none."""
    for _, text in _decoded_lines(Path(path)):
        if text is None:
            return None
        stripped = text.strip()
        if not stripped:
            continue
        words = stripped[1:].split() if stripped.startswith("#") else []
        return tuple(words[1:]) if len(words) > 1 and words[0].lower() == "path" else None
    return None


def parse_line(
    text: str,
    num_labels: int,
    line: int,
    path_exists: Callable[[str], bool] | None = None,
    allow_missing: bool = False,
) -> ListEntry | ListLineError:
    """Parse one data line into a ListEntry, or explain why it cannot be one."""
    fast = _parse_common_line(text, num_labels, line)
    if fast is not None:
        return fast

    def error(reason: str) -> ListLineError:
        return ListLineError(line=line, text=text, reason=reason)

    spans = [(m.start(), m.group()) for m in _TOKEN.finditer(text)]
    if len(spans) < num_labels + 1:
        found = max(len(spans) - 1, 0)
        return error(f"expected a path and {num_labels} labels, found {found} label(s) in {_quote(text)}")
    label_tokens = [tok for _, tok in spans[-num_labels:]]
    path = text[: spans[-num_labels][0]].strip()
    if "\0" in path:
        return error(f"the path {_quote(path)} holds a NUL byte")
    path_tokens = path.split()
    last_is_label = _is_number(path_tokens[-1]) or (allow_missing and _MISSING.fullmatch(path_tokens[-1]))
    if len(path_tokens) > 1 and last_is_label:
        # "a.jpg 1 0 1" with K=2 would otherwise become the path "a.jpg 1": only accept a path that
        # really ends in a number-like word when that file exists.
        if path_exists is None or not path_exists(path):
            extra = len(path_tokens) - 1
            return error(
                f"expected {num_labels} labels but {_quote(text)} ends in {num_labels + extra} numbers "
                f"(wrong label count?)"
            )
    values: list[float] = []
    for position, token in enumerate(label_tokens, start=1):
        if allow_missing and _MISSING.fullmatch(token):
            values.append(math.nan)
            continue
        if _NONFINITE.fullmatch(token) or _MISSING.fullmatch(token):
            hint = " (--allow-missing stores nan and NA as missing)" if _MISSING.fullmatch(token) else ""
            return error(f"label {position} is {token!r}; labels must be finite numbers{hint}")
        if not _is_number(token):
            return error(f"label {position} is {token!r}, not a number")
        value = float(token)
        if not math.isfinite(value):
            return error(f"label {position} ({token}) overflows to infinity")
        if _INTEGER.fullmatch(token) and abs(int(token)) > _FLOAT32_EXACT_INT:
            return error(f"label {position} ({token}) is an integer float32 cannot hold exactly")
        if abs(value) > _FLOAT32_MAX:  # compared, not converted: numpy would warn on the overflow
            return error(f"label {position} ({token}) overflows float32 (largest {_FLOAT32_MAX:.7g})")
        values.append(value)
    if abs(values[0]) > _INT32_MAX:
        return error(f"label 1 ({label_tokens[0]}) does not fit the Datum's int32 label")
    return ListEntry(line=line, path=path, labels=tuple(values))


# The common line in one regex match: a path without spaces, then exactly K plain decimal numbers.
_COMMON_LINES: dict[int, re.Pattern[str]] = {}
_SMALL = float(_FLOAT32_EXACT_INT)  # below this a label needs none of parse_line's range checks


def _parse_common_line(text: str, num_labels: int, line: int) -> ListEntry | None:
    """parse_line's result for the common line, found with one regex match instead of three per
    label (a third of the converter's per-line cost); None for anything else, which parse_line
    then judges (and explains) the long way: a path with spaces, a missing or extra token, a
    label that is not a plain number or is large enough to need a range check, a NUL in the path."""
    pattern = _COMMON_LINES.get(num_labels)
    if pattern is None:
        pattern = re.compile(r"\s*(\S+)" + (r"\s+(" + _NUMBER.pattern + ")") * num_labels + r"\s*")
        _COMMON_LINES[num_labels] = pattern
    match = pattern.fullmatch(text)
    if match is None or "\0" in match.group(1):
        return None
    values = tuple(float(token) for token in match.groups()[1:])
    if not all(-_SMALL <= v <= _SMALL for v in values):
        return None
    return ListEntry(line=line, path=match.group(1), labels=values)


def iter_list(
    path: str | Path,
    num_labels: int,
    path_exists: Callable[[str], bool] | None = None,
    allow_missing: bool = False,
) -> Iterator[ListEntry | ListLineError]:
    """Stream the data lines of a list file as entries or line errors, in file order."""
    for number, text in _decoded_lines(Path(path)):
        if text is None:
            yield ListLineError(line=number, text="", reason="the line is not valid UTF-8")
            continue
        if not _is_data_line(text):
            continue
        yield parse_line(text, num_labels, number, path_exists, allow_missing)
