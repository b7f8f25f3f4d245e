"""Fuzzing the list-file parser: any text or bytes give samples or errors naming file:line, nothing else."""

from __future__ import annotations

import math
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtldata.errors import InputError
from mtldata.storage.listfile import ListEntry, ListLineError, iter_list, parse_line, summarize_list

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Tokens that stress the label grammar: numbers of every shape, words float() accepts, overflow, NUL.
TOKENS = st.sampled_from(
    [
        "1",
        "-0",
        "+3",
        "0.5",
        ".5",
        "5.",
        "1e3",
        "1E-3",
        "3.5e38",
        "-3.5e38",
        "1e309",
        "nan",
        "inf",
        "-Infinity",
        "0x10",
        "1_000",
        "16777217",
        "2147483648",
        "a.jpg",
        "a b.jpg",
        "\x00",
        "\u00a0",
        "٣",
        "𝟙",
        "#",
        "\t",
        " ",
    ]
)
LINES = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(TOKENS, st.text(max_size=8)), max_size=8).map(" ".join),
)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_entry(entry: ListEntry, k: int) -> None:
    assert len(entry.labels) == k
    assert all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in entry.labels)
    assert abs(entry.labels[0]) <= 2**31 - 1
    assert entry.path and entry.path == entry.path.strip() and "\x00" not in entry.path


@FUZZ
@given(text=LINES, k=st.integers(1, 5), line=st.integers(1, 10**6))
def test_any_line_parses_to_an_entry_or_a_located_error_without_warnings(text, k, line):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy overflow warning would be a failure
        result = parse_line(text, k, line)
    assert isinstance(result, (ListEntry, ListLineError))
    assert result.line == line
    if isinstance(result, ListEntry):
        _check_entry(result, k)
    else:
        assert result.reason and "\n" not in result.reason and len(result.reason) < 400
        error = InputError("list.txt", result.line, result.reason)  # what --strict raises
        assert str(error).startswith(f"list.txt:{line}: ")


@FUZZ
@given(
    path=st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=20),
    labels=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=4),
)
def test_well_formed_lines_keep_their_path_and_exact_labels(path, labels):
    if any(c.isspace() for c in path) or path.startswith("#"):
        return
    text = path + " " + " ".join(repr(v) for v in labels)
    result = parse_line(text, len(labels), 1, lambda _: True)
    if abs(labels[0]) > 2**31 - 1:
        assert isinstance(result, ListLineError)
        return
    assert isinstance(result, ListEntry), result
    assert result.path == path and list(result.labels) == labels


@FUZZ
@given(data=st.binary(max_size=400), k=st.integers(1, 3))
def test_any_bytes_as_a_list_file_give_entries_or_errors_on_real_lines(tmp_path, data, k):
    path = tmp_path / "list.txt"  # rewritten for each example
    path.write_bytes(data)
    lines = len(data.splitlines()) or 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            summary = summarize_list(path, k)
            assert summary.num_labels == k
        except ValueError as exc:  # a wide encoding, or no data lines: named with the file
            assert str(exc).startswith(f"{path}: ")
        for item in iter_list(path, k):
            assert isinstance(item, (ListEntry, ListLineError))
            assert 1 <= item.line <= lines + 1
            if isinstance(item, ListEntry):
                _check_entry(item, k)
