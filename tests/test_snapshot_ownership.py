"""Caffe snapshots replace only mtldata's own files: a ledger beside them says which those are.

`train --solver --workdir DIR` refuses, before any step, to write a snapshot over a file it did not
write; its own snapshots are replaced on a rerun and resumed from.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_caffenet_runner import make_setup_dir
from test_caffenet_solver import batches, tiny_solver

from mtldata.caffenet.snapshots import LEDGER_NAME, SnapshotLedger
from mtldata.cli import main
from mtldata.errors import DatasetStateError

TINY = 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 max_iter: 4 snapshot: 2'


@pytest.fixture
def setup_dir(image_set, tmp_path: Path) -> Path:
    return make_setup_dir(image_set, tmp_path)


def train(setup_dir: Path, workdir: Path):
    args = ["train", "--solver", setup_dir / "solver.prototxt", "--workdir", workdir, "-q"]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_solver_refuses_a_foreign_snapshot_in_workdir_before_any_step(setup_dir, tmp_path):
    workdir = tmp_path / "work"
    (workdir / "snaps").mkdir(parents=True)
    theirs = workdir / "snaps" / "run_iter_6.caffemodel"  # SOLVER snapshots at 3 and 6 to snaps/run
    theirs.write_bytes(b"someone else's weights")
    result = train(setup_dir, workdir)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("mtldata: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "run_iter_6.caffemodel: exists and was not written by mtldata" in errors[0]
    assert theirs.read_bytes() == b"someone else's weights"
    assert sorted(p.name for p in (workdir / "snaps").iterdir()) == ["run_iter_6.caffemodel"]  # no step ran


def test_a_rerun_replaces_its_own_snapshots_but_not_one_changed_since(setup_dir, tmp_path):
    workdir = tmp_path / "work"
    assert train(setup_dir, workdir).exit_code == 0
    snaps = workdir / "snaps"
    names = {
        "run_iter_3.caffemodel",
        "run_iter_3.solverstate",
        "run_iter_6.caffemodel",
        "run_iter_6.solverstate",
    }
    ledger = json.loads((snaps / LEDGER_NAME).read_text())
    assert set(ledger["files"]) == names and all(len(v) == 1 for v in ledger["files"].values())
    again = train(setup_dir, workdir)
    assert again.exit_code == 0, again.output  # the same setup again: its own files are replaced
    state = snaps / "run_iter_3.solverstate"
    state.write_bytes(state.read_bytes() + b"\0")  # edited by someone since: no longer mtldata's
    refused = train(setup_dir, workdir)
    assert refused.exit_code == 1
    assert "run_iter_3.solverstate: exists and was not written by mtldata" in refused.output
    assert state.read_bytes().endswith(b"\0")


def test_a_snapshot_name_that_appears_during_training_is_refused_untouched(tmp_path):
    solver = tiny_solver(tmp_path, TINY, [])
    solver.step(2)
    assert (tmp_path / "snap_iter_2.caffemodel").is_file()
    theirs = tmp_path / "snap_iter_4.solverstate"
    theirs.write_bytes(b"theirs")
    with pytest.raises(DatasetStateError, match="snap_iter_4.solverstate: exists and was not written"):
        solver.step(2)
    assert theirs.read_bytes() == b"theirs"
    assert not (tmp_path / "snap_iter_4.caffemodel").exists()  # both names checked before either is written


def test_a_symlink_in_a_snapshot_name_is_not_followed(tmp_path):
    target = tmp_path / "precious.bin"
    target.write_bytes(b"precious")
    (tmp_path / "snap_iter_4.caffemodel").symlink_to(target)
    solver = tiny_solver(tmp_path, TINY, [])
    with pytest.raises(DatasetStateError, match="snap_iter_4.caffemodel"):
        solver.solve()
    assert solver.iter == 0 and target.read_bytes() == b"precious"


def test_resume_from_its_own_snapshot_writes_on_over_its_own_files(tmp_path):
    first = tiny_solver(tmp_path, TINY, [])
    first.solve()
    resumed = tiny_solver(tmp_path, TINY, [])
    resumed.train_batches = itertools.islice(batches(0), 2, None)
    resumed.restore(tmp_path / "snap_iter_2.solverstate")
    assert resumed.snapshot_iterations() == [4]
    resumed.solve()  # writes snap_iter_4 again: its own
    assert torch.allclose(resumed.net.layer("ip").weight, first.net.layer("ip").weight)
    assert SnapshotLedger(tmp_path).owns(tmp_path / "snap_iter_4.caffemodel")


def test_a_ledger_accounts_for_both_contents_while_a_file_is_replaced(tmp_path):
    ledger = SnapshotLedger(tmp_path)
    path = ledger.write(tmp_path / "a_iter_1.caffemodel", b"old")
    # What a crash between the ledger write and the rename leaves: both versions recorded, old file.
    ledger.entries[path.name].append({"size": 3, "sha256": "0" * 64})
    ledger._save()
    assert SnapshotLedger(tmp_path).owns(path)
    ledger.write(path, b"new contents")
    reread = SnapshotLedger(tmp_path)
    assert path.read_bytes() == b"new contents" and len(reread.entries[path.name]) == 1
    (tmp_path / LEDGER_NAME).write_text("not json")  # a damaged ledger accounts for nothing
    with pytest.raises(DatasetStateError):
        SnapshotLedger(tmp_path).check_writable([path])
