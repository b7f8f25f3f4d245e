"""The list-file parser: paths with spaces, K inference, and line-numbered errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtldata.storage.listfile import (
    ListEntry,
    ListLineError,
    infer_num_labels,
    iter_list,
    parse_line,
    summarize_list,
)


def parse(text: str, k: int, exists=None) -> ListEntry | ListLineError:
    return parse_line(text, k, line=7, path_exists=exists)


def test_path_with_spaces_keeps_everything_before_the_labels():
    entry = parse("my dir/with space.jpg 1 0 0.5", 3)
    assert entry == ListEntry(line=7, path="my dir/with space.jpg", labels=(1.0, 0.0, 0.5))


def test_tabs_and_repeated_whitespace_separate_labels():
    entry = parse("a.jpg\t1\t\t2   -3.5e-1", 3)
    assert isinstance(entry, ListEntry)
    assert entry.path == "a.jpg" and entry.labels == (1.0, 2.0, -0.35)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a.jpg 1", "expected a path and 3 labels, found 1"),
        ("a.jpg 1 x 2", "label 2 is 'x', not a number"),
        ("a.jpg 1 nan 2", "label 2 is 'nan'; labels must be finite"),
        ("a.jpg 1 2 -inf", "label 3 is '-inf'"),
        ("a.jpg 1 1_0 2", "label 2 is '1_0', not a number"),
        ("a.jpg 1 2 1e400", "overflows"),
        ("a.jpg 16777217 0 0", "integer float32 cannot hold exactly"),
        ("a.jpg 1 0 1 1", "ends in 4 numbers"),
    ],
)
def test_bad_lines_say_why(text, fragment):
    result = parse(text, 3)
    assert isinstance(result, ListLineError)
    assert result.line == 7
    assert fragment in result.reason


def test_path_ending_in_a_number_is_accepted_when_that_file_exists():
    assert isinstance(parse("scan 2 1 0 1", 3, exists=lambda p: False), ListLineError)
    entry = parse("scan 2 1 0 1", 3, exists=lambda p: p == "scan 2")
    assert isinstance(entry, ListEntry) and entry.path == "scan 2"


def test_integers_stay_exact_as_float32():
    entry = parse("a.jpg 16777216 -7 123456", 3)
    assert entry.labels == (16777216.0, -7.0, 123456.0)


def test_infer_num_labels_counts_trailing_numbers():
    assert infer_num_labels("with space.jpg 1") == 1
    assert infer_num_labels("a.jpg 1 0 0 1 0.46") == 5
    assert infer_num_labels("a.jpg 1 nan 2") == 3  # the NaN is then reported, not swallowed into the path


def test_file_with_bom_crlf_comments_and_blank_lines(tmp_path: Path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg 1 2\r\n\r\n# comment 1 2\r\n  \r\nb c.png 3 4\r\nbad 1\r\n")
    summary = summarize_list(path)
    assert summary.num_labels == 2 and summary.inferred and summary.num_lines == 3
    items = list(iter_list(path, 2))
    assert items[0] == ListEntry(1, "a.jpg", (1.0, 2.0))
    assert items[1] == ListEntry(5, "b c.png", (3.0, 4.0))
    assert isinstance(items[2], ListLineError) and items[2].line == 6


def test_non_utf8_line_is_an_error_with_its_number(tmp_path: Path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a.jpg 1\n\xff\xfe.jpg 2\n")
    items = list(iter_list(path, 1))
    assert isinstance(items[1], ListLineError) and items[1].line == 2 and "UTF-8" in items[1].reason


def test_summarize_without_labels_asks_for_num_labels(tmp_path: Path):
    path = tmp_path / "list.txt"
    path.write_text("just_a_path.jpg\n")
    with pytest.raises(ValueError, match="--num-labels"):
        summarize_list(path)


# -- properties ---------------------------------------------------------------------------------

path_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), blacklist_characters="#")
path_word = st.text(path_chars, min_size=1, max_size=8).filter(lambda w: not _looks_numeric(w))
paths = st.lists(path_word, min_size=1, max_size=3).map(" ".join)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)
labels = st.lists(st.one_of(st.integers(-(2**24), 2**24).map(float), finite), min_size=1, max_size=6)


def _looks_numeric(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _fmt(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)


@given(paths, labels, st.sampled_from([" ", "\t", "  ", " \t "]))
def test_property_round_trip(path, values, sep):
    text = path + sep + sep.join(_fmt(v) for v in values)
    entry = parse_line(text, len(values), line=1)
    assert isinstance(entry, ListEntry)
    assert entry.path == path
    assert entry.labels == tuple(values)


@given(paths, labels, st.integers(1, 3))
def test_property_wrong_label_count_is_never_silent(path, values, extra):
    text = path + " " + " ".join(_fmt(v) for v in values)
    # Asking for more labels than the line has must never succeed by eating the path.
    result = parse_line(text, len(values) + extra, line=3)
    if isinstance(result, ListEntry):
        # Only possible if the path itself split into numeric-looking tokens, which paths exclude.
        pytest.fail(f"parsed {text!r} as {result}")
    assert result.line == 3


@given(paths, st.lists(finite, min_size=2, max_size=5))
def test_property_inferred_k_matches(path, values):
    text = path + " " + " ".join(_fmt(v) for v in values)
    assert infer_num_labels(text) == len(values)
    assert all(math.isfinite(v) for v in parse_line(text, len(values), 1).labels)


def test_count_errors_quote_the_line():
    assert parse("  a b.jpg 1 ", 3).reason.endswith("in 'a b.jpg 1'")
    long_line = "x" * 200 + " 1"
    assert parse(long_line, 3).reason.endswith("...'") and len(parse(long_line, 3).reason) < 150
