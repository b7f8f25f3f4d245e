"""The README's Python examples run as written, against a small real dataset made here."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(blocks("python")) >= 2


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtldata.storage.sample_set import make_sample_set

    list_file = make_sample_set(tmp_path, count=12, size=32)
    shutil.copy(list_file, tmp_path / "train.txt")
    # The README's tasks.toml names the sample set's five labels as its examples use them.
    (tmp_path / "tasks.toml").write_text(blocks("toml")[0], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    examples = blocks("python")
    # The block that writes train_lmdb runs first; the others read it.
    examples.sort(key=lambda block: "convert(" not in block)
    for block in examples:
        namespace: dict[str, object] = {"__name__": "readme_example"}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "train_lmdb" / "manifest.json").is_file()
