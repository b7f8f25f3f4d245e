"""parse_line's one-match path for common lines gives exactly what the long way gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import mtldata.storage.listfile as listfile

NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.sampled_from(
        [
            "0",
            "-0",
            "+1",
            "1.",
            ".5",
            "1e3",
            "1E-3",
            "16777216",
            "16777217",
            "-16777217",
            "3.5e38",
            "1e400",
            "2147483648",
            "nan",
            "inf",
            "x",
            "1_0",
            "0x10",
            "١",
        ]
    ),
)
PATHS = st.sampled_from(["a.jpg", "dir/b c.png", "c.jpg 1", "d 2.jpg", "ü.png", "e.jpg\t", "nul\x00.jpg"])
SPACES = st.sampled_from([" ", "\t", "  ", "\u3000", " \t "])


def the_long_way(text: str, k: int, line: int):
    saved = listfile._parse_common_line
    listfile._parse_common_line = lambda *args: None
    try:
        return listfile.parse_line(text, k, line)
    finally:
        listfile._parse_common_line = saved


@settings(max_examples=400)
@given(
    path=PATHS, labels=st.lists(NUMBERS, min_size=0, max_size=5), sep=SPACES, k=st.integers(1, 4), lead=SPACES
)
def test_common_line_path_agrees_with_the_long_way(path, labels, sep, k, lead):
    text = lead + path + sep + sep.join(labels) + sep
    assert listfile.parse_line(text, k, 7) == the_long_way(text, k, 7)


def test_a_plain_line_takes_the_one_match_path():
    entry = listfile._parse_common_line("img/1.jpg 2 0 1 0.5", 4, 3)
    assert entry == listfile.ListEntry(line=3, path="img/1.jpg", labels=(2.0, 0.0, 1.0, 0.5))
    assert listfile._parse_common_line("img/1.jpg 2 0 1", 4, 3) is None  # a token short: the long way
    assert listfile._parse_common_line("img/1.jpg 1e400 0 1 0", 4, 3) is None  # too large to skip checks
