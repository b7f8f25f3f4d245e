"""The conversion pipeline on real image files and real LMDB environments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import db_items, write_image, write_list

import mtldata.convert.pipeline as convert_module
from mtldata.caffe.datum import parse_datum
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import DatasetStateError, InputError
from mtldata.storage.backends import open_reader
from mtldata.storage.backends.lmdb import database_digest
from mtldata.storage.image import ImageOptions, load_image, to_chw


def spec_for(list_file: Path, out: Path, **kw) -> ConvertSpec:
    kw.setdefault("workers", 1)
    return ConvertSpec(list_file=list_file, output=out, **kw)


def test_raw_conversion_stores_caffe_datums_and_float_labels(image_set, tmp_path):
    list_file, rows = image_set
    result = convert(spec_for(list_file, tmp_path / "out"))
    assert result.count == 12 and result.skipped == 0
    images = db_items(tmp_path / "out" / "images.lmdb")
    labels = db_items(tmp_path / "out" / "labels.lmdb")
    assert [k for k, _ in images] == [k for k, _ in labels]
    assert [k.decode() for k, _ in images] == [f"{i:08d}_{p}" for i, (p, _) in enumerate(rows)]
    for (_, value), (_, label_value), (path, want) in zip(images, labels, rows, strict=True):
        datum = parse_datum(value)
        expected = to_chw(load_image(list_file.parent / path))
        assert datum.HasField("encoded") and not datum.encoded
        assert (datum.channels, datum.height, datum.width) == expected.shape
        assert datum.data == expected.tobytes()
        assert datum.label == int(want[0])
        label = parse_datum(label_value)
        assert (label.channels, label.height, label.width) == (4, 1, 1)
        assert not label.HasField("data") and not label.HasField("label") and not label.HasField("encoded")
        assert list(label.float_data) == pytest.approx(np.float32(want).tolist())


def test_manifest_describes_the_dataset(image_set, tmp_path):
    list_file, rows = image_set
    convert(spec_for(list_file, tmp_path / "out", label_names=("a", "b", "c", "d")))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["format"] == "mtldata"
    assert manifest["count"] == 12 and manifest["num_labels"] == 4
    assert manifest["label_names"] == ["a", "b", "c", "d"]
    assert manifest["image"]["shape"] == [3, 20, 24]
    assert manifest["image"]["color_order"] == "BGR"
    assert len(manifest["source"]["list_sha256"]) == 64
    stats = {s["name"]: s for s in manifest["label_stats"]}
    assert stats["d"]["min"] == -1.5 and stats["d"]["max"] == 9.5
    assert stats["c"]["mean"] == pytest.approx(np.mean([0.25 * i for i in range(12)]))
    assert manifest["errors"]["count"] == 0
    assert not (tmp_path / "out.partial").exists()


def test_output_is_identical_for_any_worker_count(image_set, tmp_path):
    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "w1", workers=1))
    convert(spec_for(list_file, tmp_path / "w2", workers=2))
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "w1" / db) == db_items(tmp_path / "w2" / db)


def test_shuffle_is_seeded_and_renumbers_keys(image_set, tmp_path):
    list_file, rows = image_set
    convert(spec_for(list_file, tmp_path / "a", shuffle=True, seed=5))
    convert(spec_for(list_file, tmp_path / "b", shuffle=True, seed=5))
    convert(spec_for(list_file, tmp_path / "c", shuffle=True, seed=6))
    a = db_items(tmp_path / "a" / "images.lmdb")
    assert a == db_items(tmp_path / "b" / "images.lmdb")
    assert a != db_items(tmp_path / "c" / "images.lmdb")
    keys = [k.decode() for k, _ in a]
    assert [k[:8] for k in keys] == [f"{i:08d}" for i in range(12)]
    assert sorted(k[9:] for k in keys) == sorted(p for p, _ in rows)
    assert [k[9:] for k in keys] != [p for p, _ in rows]


def test_encoded_stores_the_original_file_bytes(image_set, tmp_path):
    list_file, rows = image_set
    convert(spec_for(list_file, tmp_path / "out", image=ImageOptions(encoded=True)))
    for (_, value), (path, _) in zip(db_items(tmp_path / "out" / "images.lmdb"), rows, strict=True):
        datum = parse_datum(value)
        assert datum.encoded and not datum.HasField("channels")
        assert datum.data == (list_file.parent / path).read_bytes()


def test_resize_gives_the_requested_size(image_set, tmp_path):
    list_file, _ = image_set
    convert(
        spec_for(
            list_file, tmp_path / "out", image=ImageOptions(resize_width=16, resize_height=10, gray=True)
        )
    )
    for _, value in db_items(tmp_path / "out" / "images.lmdb"):
        datum = parse_datum(value)
        assert (datum.channels, datum.height, datum.width) == (1, 10, 16)


def test_map_size_grows_without_being_asked(image_set, tmp_path):
    list_file, _ = image_set
    result = convert(spec_for(list_file, tmp_path / "out", backend_options={"initial_map_size": 32 * 1024}))
    assert result.count == 12
    env = lmdb.open(str(tmp_path / "out" / "images.lmdb"), readonly=True, lock=False)
    assert env.info()["map_size"] > 32 * 1024
    env.close()
    assert len(db_items(tmp_path / "out" / "images.lmdb")) == 12


def make_bad_list(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for name in ("ok1.jpg", "ok2.png", "ok3.jpg"):
        write_image(root / name, seed=len(name))
    (root / "corrupt.jpg").write_bytes(b"this is not a jpeg at all")
    good = (root / "ok1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return write_list(
        tmp_path / "bad.txt",
        [
            "ok1.jpg 1 0",
            "missing.jpg 1 0",
            "corrupt.jpg 0 1",
            "ok2.png 2",
            "ok3.jpg 1 zero",
            "truncated.jpg 0 0",
            "ok3.jpg nan 1",
            "ok3.jpg 2 1",
        ],
    )


def test_bad_samples_are_skipped_and_reported_with_line_numbers(tmp_path):
    list_file = make_bad_list(tmp_path)
    result = convert(spec_for(list_file, tmp_path / "out", root=tmp_path / "imgs"))
    assert result.count == 2 and result.skipped == 6
    by_line = {e.line: e for e in result.errors}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert "missing.jpg" == by_line[2].path and "not found" in by_line[2].reason
    assert by_line[3].path == "corrupt.jpg"
    assert "found 1 label" in by_line[4].reason
    assert "'zero', not a number" in by_line[5].reason
    assert by_line[6].path == "truncated.jpg"
    assert "finite" in by_line[7].reason
    rows = (tmp_path / "out" / "errors.tsv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("2\tmissing.jpg\t")
    keys = [k.decode() for k, _ in db_items(tmp_path / "out" / "images.lmdb")]
    assert keys == ["00000000_ok1.jpg", "00000007_ok3.jpg"]  # gaps where lines were skipped, as Caffe
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["errors"]["count"] == 6 and manifest["count"] == 2
    assert manifest["errors"]["first"][0] == {"line": 2, "path": "missing.jpg", "reason": "file not found"}


def test_strict_stops_at_the_first_error_and_leaves_nothing(tmp_path):
    list_file = make_bad_list(tmp_path)
    with pytest.raises(InputError) as info:
        convert(spec_for(list_file, tmp_path / "out", root=tmp_path / "imgs", strict=True))
    assert info.value.line == 2 and str(list_file) in str(info.value) and "missing.jpg" in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_check_size_skips_images_of_another_size(tmp_path):
    write_image(tmp_path / "a.jpg", size=(24, 20))
    write_image(tmp_path / "b.jpg", size=(30, 20))
    write_image(tmp_path / "c.jpg", size=(24, 20))
    list_file = write_list(tmp_path / "l.txt", ["a.jpg 0", "b.jpg 1", "c.jpg 2"])
    result = convert(spec_for(list_file, tmp_path / "out", check_size=True))
    assert result.count == 2 and result.errors[0].line == 2 and "check-size" in result.errors[0].reason


def test_existing_dataset_is_not_overwritten_without_overwrite(image_set, tmp_path):
    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "out"))
    before = db_items(tmp_path / "out" / "images.lmdb")
    with pytest.raises(DatasetStateError, match="--overwrite"):
        convert(spec_for(list_file, tmp_path / "out"))
    assert db_items(tmp_path / "out" / "images.lmdb") == before
    result = convert(spec_for(list_file, tmp_path / "out", overwrite=True, shuffle=True, seed=1))
    assert result.count == 12 and db_items(tmp_path / "out" / "images.lmdb") != before


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mtldata.convert.pipeline import ConvertSpec, convert

    stop_at = int(sys.argv[3])

    def progress(done, total):
        if done == stop_at:
            os.kill(os.getpid(), signal.SIGKILL)

    spec = ConvertSpec(list_file=Path(sys.argv[1]), output=Path(sys.argv[2]), workers=2,
                       commit_every=4, shuffle=True, seed=3)
    convert(spec, progress)
    """
)


@pytest.mark.parametrize("stop_at", [2, 11])
def test_kill_9_then_resume_equals_an_uninterrupted_run(image_set, tmp_path, stop_at):
    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "ref", shuffle=True, seed=3))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(list_file), str(out), str(stop_at)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and (tmp_path / "out.partial").is_dir()
    with pytest.raises(Exception, match="interrupted"):
        open_reader(tmp_path / "out.partial")
    with pytest.raises(DatasetStateError, match="--resume"):
        convert(spec_for(list_file, out, shuffle=True, seed=3))
    with pytest.raises(DatasetStateError, match="seed"):
        convert(spec_for(list_file, out, shuffle=True, seed=4, resume=True))
    result = convert(spec_for(list_file, out, shuffle=True, seed=3, resume=True, workers=2))
    assert result.count == 12
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(out / db) == db_items(tmp_path / "ref" / db)
    manifest = json.loads((out / "manifest.json").read_text())
    reference = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert manifest["count"] == 12 and manifest["label_stats"] == reference["label_stats"]
    # The checksums come from the digest journal, which the resume had to cut back to the last commit.
    assert manifest["checksums"] == reference["checksums"]
    recorded = manifest["checksums"]["images.lmdb"]
    assert {k: recorded[k] for k in ("records", "sha256")} == database_digest(out / "images.lmdb")
    for db in ("images.lmdb", "labels.lmdb"):  # the per-record digests were cut back the same way
        assert (out / f"{db}.digests").read_bytes() == (tmp_path / "ref" / f"{db}.digests").read_bytes()


def test_reader_reads_back_what_was_written(image_set, tmp_path):
    list_file, rows = image_set
    convert(spec_for(list_file, tmp_path / "out"))
    reader = open_reader(tmp_path / "out")
    assert len(reader) == 12
    sample = reader.sample(5)
    assert sample.key == f"00000005_{rows[5][0]}"
    assert sample.image.shape == (3, 20, 24)
    np.testing.assert_array_equal(reader.labels(5), np.float32(rows[5][1]))
    assert os.getpid() == reader._pid  # opened lazily, in this process
    reader.close()


def test_ctrl_c_leaves_a_resumable_partial_dataset(image_set, tmp_path):
    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "ref"))
    out = tmp_path / "out"

    def interrupt_at_7(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        convert(spec_for(list_file, out, workers=2, commit_every=3), interrupt_at_7)
    assert not out.exists()
    progress = json.loads((tmp_path / "out.partial" / "progress.json").read_text())
    assert progress["next_position"] == 6  # the last commit before the interruption
    result = convert(spec_for(list_file, out, workers=2, commit_every=3, resume=True))
    assert result.count == 12
    # the resumed run's own samples and rate, not the run's before it
    assert result.resumed == progress["written"] and 0 < result.resumed < 12
    assert result.rate == pytest.approx((12 - result.resumed) / result.seconds)
    reference = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert result.manifest["checksums"] == reference["checksums"]
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(out / db) == db_items(tmp_path / "ref" / db)


def test_a_stop_that_synced_everything_resumes_even_after_the_machine_restarted(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "out"

    def interrupt_at_7(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(spec_for(list_file, out, workers=2, commit_every=3), interrupt_at_7)
    progress = json.loads((tmp_path / "out.partial" / "progress.json").read_text())
    assert progress["boot_id"] is None  # every commit reached the disk before the exception left
    assert convert(spec_for(list_file, out, workers=2, commit_every=3, resume=True)).count == 12


def test_a_resume_after_a_system_crash_is_refused_and_overwrite_starts_over(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(list_file), str(out), "7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    progress_file = tmp_path / "out.partial" / "progress.json"
    progress = json.loads(progress_file.read_text())
    assert progress["boot_id"] == convert_module.current_boot_id()  # killed: synced, then left as is
    # As if the machine had stopped while commits were still on their way to the disk:
    progress_file.write_text(json.dumps({**progress, "boot_id": "an-earlier-boot"}))
    with pytest.raises(DatasetStateError, match="the machine restarted.*--overwrite"):
        convert(spec_for(list_file, out, shuffle=True, seed=3, resume=True))
    assert convert(spec_for(list_file, out, shuffle=True, seed=3, overwrite=True)).count == 12


def test_a_commit_per_image_remaps_along_the_way_and_writes_the_same_records(image_set, tmp_path):
    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "ref"))
    # 12 commits: the writer is remapped after the 8th, between syncs (REMAP_EVERY)
    assert convert_module.REMAP_EVERY < 12
    result = convert(spec_for(list_file, tmp_path / "out", workers=2, commit_every=1))
    reference = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert result.manifest["checksums"] == reference["checksums"]
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "out" / db) == db_items(tmp_path / "ref" / db)


def test_without_the_shared_arena_results_travel_pickled_and_are_the_same(image_set, tmp_path, monkeypatch):
    import mmap

    import mtldata.convert.pipeline as convert_module

    list_file, _ = image_set
    convert(spec_for(list_file, tmp_path / "arena", workers=2))
    busy = mmap.mmap(-1, 4096)  # as if another thread's conversion held the arena
    monkeypatch.setattr(convert_module, "_ARENA", busy)
    convert(spec_for(list_file, tmp_path / "pickled", workers=2))
    assert convert_module._ARENA is busy  # left alone for its owner
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "pickled" / db) == db_items(tmp_path / "arena" / db)


def test_no_decode_worker_outlives_the_conversion(image_set, tmp_path):
    # A worker still alive would hold the staging lock it inherited: a resume or a second
    # conversion of the same output in this process would find it "running".
    import multiprocessing

    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "a", workers=2))
    assert multiprocessing.active_children() == []
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "a", workers=2, overwrite=True))
    assert multiprocessing.active_children() == []


def _progress_saves(monkeypatch) -> list[dict]:
    """Every progress.json the converter writes, in order."""
    saves: list[dict] = []
    real = convert_module.write_json_atomic

    def recording(path, data, *args, **kwargs):
        if Path(path).name == convert_module.PROGRESS_NAME:
            saves.append(data)
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(convert_module, "write_json_atomic", recording)
    return saves


def test_a_list_ending_on_a_commit_is_not_committed_twice(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    saves = _progress_saves(monkeypatch)
    assert convert(spec_for(list_file, tmp_path / "out", commit_every=6)).count == 12
    # the start, then the commits after 6 and 12 samples; none repeats the one before
    assert [s["next_position"] for s in saves] == [0, 6, 12]


def test_an_error_after_the_last_commit_is_still_committed(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    with open(list_file, "a", encoding="utf-8") as fh:
        fh.write("images/missing.jpg 0 0 0 0\n")
    saves = _progress_saves(monkeypatch)
    result = convert(spec_for(list_file, tmp_path / "out", commit_every=6))
    assert result.count == 12 and result.skipped == 1
    assert [(s["next_position"], s["error_count"]) for s in saves] == [(0, 0), (6, 0), (12, 0), (13, 1)]


def test_workers_default_to_the_cores_this_process_may_run_on(image_set, tmp_path, monkeypatch):
    list_file, _ = image_set
    started: list[int] = []
    pool = convert_module._DecodePool

    class Spy(pool):
        def __init__(self, options, workers, *args, **kwargs):
            started.append(workers)
            super().__init__(options, workers, *args, **kwargs)

    monkeypatch.setattr(convert_module, "_DecodePool", Spy)
    monkeypatch.setattr(convert_module, "available_cores", lambda: 3)
    monkeypatch.setattr(convert_module.os, "cpu_count", lambda: 64)
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "out"))
    assert started == [3]


def test_a_quoted_path_that_is_not_found_says_the_quotes_are_part_of_it(tmp_path):
    write_image(tmp_path / "my images" / "a b.jpg")
    list_file = write_list(tmp_path / "l.txt", ['"my images/a b.jpg" 1 2', "my images/a b.jpg 1 2"])
    result = convert(spec_for(list_file, tmp_path / "out"))
    assert result.count == 1  # the same path without quotes, spaces and all
    [error] = result.errors
    assert (error.line, error.path) == (1, '"my images/a b.jpg"')
    assert error.reason == (
        "file not found (the quotes are read as part of the path: write it without them, spaces and all)"
    )
