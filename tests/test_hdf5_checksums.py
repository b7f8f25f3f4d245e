"""HDF5 shard checksums: XXH3-128, split at the pixel data (hashed while written), and the sha256
whole-file checksums of datasets written before still verify."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import xxhash
from conftest import write_image, write_list
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mtldata.storage.backends.hdf5 as hdf5_backend
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.inspect.verify import format_report, verify_dataset
from mtldata.storage.backends import open_reader
from mtldata.storage.image import ImageOptions
from mtldata.storage.manifest import checksum, region_digests


def hdf5(list_file: Path, out: Path, **options) -> dict:
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, backend="hdf5", backend_options=options))
    return json.loads((out / "manifest.json").read_text())


def flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def data_region(shard: Path) -> tuple[int, int]:
    with h5py.File(shard, "r") as f:
        return f["data"].id.get_offset(), f["data"].id.get_storage_size()


def checksum_problems(report) -> list[str]:
    return [p.reason for p in report.problems if p.key is None and "checksum mismatch" in p.reason]


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_an_uncompressed_shard_s_checksum_is_split_at_its_pixel_data(image_set, tmp_path, monkeypatch, dtype):
    import mtldata.storage.backends.hdf5 as hdf5_backend

    def no_move(*args):
        raise AssertionError("HDF5 put `data` of a shorter shard elsewhere: the rows had to be moved")

    monkeypatch.setattr(hdf5_backend, "copy_range", no_move)  # full and last shards: rows stay in place
    list_file, _ = image_set
    tasks = {"num_labels": 4, "tasks": [["cls", 0, 1], ["rest", 1, 4]]}
    manifest = hdf5(list_file, tmp_path / "h5", shard_size=5, hdf5_dtype=dtype, task_datasets=tasks)
    for name in manifest["files"]["shards"]:
        shard = tmp_path / "h5" / name
        entry = manifest["checksums"][name]
        offset, length = data_region(shard)
        raw = shard.read_bytes()
        assert entry["data_region"] == [offset, length]
        # the digest hashed while writing is the one of the bytes on disk, and so is the rest's
        assert entry["data_xxh3_128"] == xxhash.xxh3_128(raw[offset : offset + length]).hexdigest()
        assert entry["rest_xxh3_128"] == xxhash.xxh3_128(raw[:offset] + raw[offset + length :]).hexdigest()
        assert entry["bytes"] == len(raw) and "sha256" not in entry
        assert checksum(shard, region=(offset, length)) == entry
    assert verify_dataset(tmp_path / "h5").ok


@pytest.mark.parametrize("where", ["first pixel", "last pixel", "just before the pixels", "file end"])
def test_a_flipped_byte_anywhere_in_a_shard_is_a_checksum_mismatch_naming_it(image_set, tmp_path, where):
    list_file, _ = image_set
    out = tmp_path / "h5"
    hdf5(list_file, out, shard_size=5)
    shard = out / "part-00001.h5"
    offset, length = data_region(shard)
    at = {
        "first pixel": offset,
        "last pixel": offset + length - 1,
        "just before the pixels": offset - 1,
        "file end": -1,
    }[where]
    flip(shard, at)
    report = verify_dataset(out)
    assert any(r.startswith("part-00001.h5: checksum mismatch") for r in checksum_problems(report)), (
        format_report(report)
    )
    assert not any("part-00000.h5" in r for r in checksum_problems(report))


def test_a_compressed_shard_has_a_whole_file_xxh3_checksum(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "h5"
    manifest = hdf5(list_file, out, compression="gzip")
    entry = manifest["checksums"]["part-00000.h5"]
    assert entry["xxh3_128"] == xxhash.xxh3_128((out / "part-00000.h5").read_bytes()).hexdigest()
    assert "data_region" not in entry
    assert verify_dataset(out).ok
    flip(out / "part-00000.h5", -1)
    assert checksum_problems(verify_dataset(out))


def test_a_dataset_with_sha256_file_checksums_still_verifies_and_names_a_damaged_shard(image_set, tmp_path):
    """The manifest as mtldata wrote it before XXH3: a sha256 of each whole file."""
    list_file, _ = image_set
    out = tmp_path / "h5"
    manifest = hdf5(list_file, out, shard_size=5)
    for rel, entry in manifest["checksums"].items():
        raw = (out / rel).read_bytes()
        for key in ("xxh3_128", "data_region", "data_xxh3_128", "rest_xxh3_128"):
            entry.pop(key, None)
        entry["sha256"] = hashlib.sha256(raw).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_dataset(out)
    assert report.ok, format_report(report)
    flip(out / "part-00002.h5", -1)
    problems = checksum_problems(verify_dataset(out))
    assert len(problems) == 1 and problems[0].startswith("part-00002.h5: checksum mismatch: expected bytes")
    assert "sha256" in problems[0]


def test_a_manifest_entry_without_its_region_is_a_mismatch_not_a_pass(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "h5"
    manifest = hdf5(list_file, out)
    del manifest["checksums"]["part-00000.h5"]["data_region"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert checksum_problems(verify_dataset(out))


def test_images_larger_than_one_conversion_piece_are_stored_and_hashed_whole(tmp_path):
    # 3 x 200 x 150 = 90,000 values per image: more than the 65,536 converted at a time
    rows = []
    for i in range(3):
        write_image(tmp_path / f"big{i}.png", size=(150, 200), seed=i)
        rows.append(f"big{i}.png {i}")
    list_file = write_list(tmp_path / "list.txt", rows)
    out = tmp_path / "h5"
    hdf5(list_file, out)
    reader = open_reader(out)
    for i in range(3):
        want = np.asarray(Image.open(tmp_path / f"big{i}.png").convert("RGB"))
        np.testing.assert_array_equal(reader.image_array(i), want[:, :, ::-1].transpose(2, 0, 1))
    reader.close()
    with h5py.File(out / "part-00000.h5", "r") as f:
        assert f["data"].dtype == np.float32 and f["data"].shape == (3, 3, 200, 150)
    assert verify_dataset(out).ok


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3000),
    offset=st.integers(0, 3500),
    length=st.integers(0, 3500),
    known=st.booleans(),
)
def test_region_digests_hash_the_range_and_everything_else_in_file_order(
    tmp_path_factory, data, offset, length, known
):
    path = tmp_path_factory.mktemp("r") / "f.bin"
    path.write_bytes(data)
    inside = data[offset : offset + length]
    want = {
        "data_region": [offset, length],
        "data_xxh3_128": xxhash.xxh3_128(inside).hexdigest(),
        "rest_xxh3_128": xxhash.xxh3_128(data[:offset] + data[offset + length :]).hexdigest(),
    }
    assert region_digests(path, offset, length, want["data_xxh3_128"] if known else None) == want


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import mtldata.storage.backends.hdf5 as hdf5
    import mtldata.storage.backends.hdf5_rows as hdf5_rows
    from mtldata.convert.pipeline import ConvertSpec, convert

    partial, where = Path(sys.argv[2] + ".partial"), sys.argv[3]

    def in_second_shard():
        return (partial / "part-00000.h5").is_file()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "between rows":  # the second shard's rows half written
        write = hdf5_rows.RowFile.write
        def dying_write(self, pixels):
            if in_second_shard() and self.rows == 2:
                die()
            write(self, pixels)
        hdf5_rows.RowFile.write = dying_write
    elif where == "in h5py":  # h5py has begun the second shard's skeleton
        skeleton = hdf5.Hdf5Writer._skeleton
        def dying_skeleton(self, path, n, keys=None, labels=None):
            if keys is not None and in_second_shard():
                import h5py
                f = h5py.File(path, "w")
                f.create_dataset("data", (n, 1))
                f.flush()
                die()
            return skeleton(self, path, n, keys, labels)
        hdf5.Hdf5Writer._skeleton = dying_skeleton
    else:  # "laying bytes": the skeleton's first bytes are laid around the rows, the rest not
        lay_around = hdf5.lay_around
        def dying_lay_around(skeleton, target, offset, length):
            if in_second_shard():
                hdf5_rows.copy_range(skeleton, target, 0, offset)
                die()
            lay_around(skeleton, target, offset, length)
        hdf5.lay_around = dying_lay_around
    spec = ConvertSpec(list_file=Path(sys.argv[1]), output=Path(sys.argv[2]), workers=1, commit_every=2,
                       backend="hdf5", backend_options={"shard_size": 5})
    convert(spec)
    """
)


@pytest.mark.parametrize("where", ["between rows", "in h5py", "laying bytes"])
def test_kill_9_while_a_shard_is_written_leaves_no_shard_and_resumes_record_identical(
    image_set, tmp_path, where
):
    list_file, _ = image_set
    reference = tmp_path / "ref"
    hdf5(list_file, reference, shard_size=5)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(list_file), str(out), where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    partial = tmp_path / "out.partial"
    assert (partial / "part-00000.h5").is_file()
    assert not (partial / "part-00001.h5").exists()  # a reader never sees the half-written shard
    assert (partial / "part-00001.h5.tmp").is_file()  # it died while the shard was being written
    convert(
        ConvertSpec(
            list_file=list_file,
            output=out,
            workers=1,
            backend="hdf5",
            backend_options={"shard_size": 5},
            resume=True,
        )
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for name in ("part-00000.h5", "part-00001.h5", "part-00002.h5"):
        with h5py.File(out / name, "r") as got, h5py.File(reference / name, "r") as want:
            assert set(got) == set(want)
            for dataset in want:
                np.testing.assert_array_equal(got[dataset][:], want[dataset][:])
    report = verify_dataset(out)
    assert report.ok, format_report(report)


def test_the_converter_does_not_read_its_shards_back_for_the_manifest(image_set, tmp_path, monkeypatch):
    """The writer's checksums, made at seal, are the manifest's: only the list file is hashed at the end."""
    import mtldata.storage.manifest as manifest

    hashed: list[str] = []
    real = manifest.file_digest

    def spy(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(manifest, "file_digest", spy)
    monkeypatch.setattr(manifest, "region_digests", lambda *a, **k: hashed.append("region") or {})
    recorded = hdf5(image_set[0], tmp_path / "h5", shard_size=5)["checksums"]
    assert hashed == ["hdf5_list.txt"]
    assert all("data_xxh3_128" in recorded[f"part-0000{i}.h5"] for i in range(3))


def test_rows_written_where_hdf5_did_not_put_data_are_moved_there(tmp_path):
    """The rows go where a probe said HDF5 puts `data`; were HDF5 to place it elsewhere at seal,
    the rows are copied there and the shard is still whole."""
    from mtldata.storage.backends import WriterOptions
    from mtldata.storage.backends.hdf5 import Hdf5Writer
    from mtldata.storage.records import ImagePayload, Sample

    writer = Hdf5Writer(tmp_path, WriterOptions(num_labels=2, extra={"shard_size": 4}))
    writer._data_offset = 1 << 16  # not where HDF5 puts it
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 5, 7), dtype=np.uint8) for _ in range(6)]
    for i, image in enumerate(images):
        writer.put(
            Sample(i, f"{i:08d}_x{i}", ImagePayload(image.tobytes(), False, (3, 5, 7)), np.float32([i, -i]))
        )
    files = writer.close()
    assert files["shard_counts"] == [4, 2]
    reader = open_reader(tmp_path / "hdf5_list.txt")
    for i, image in enumerate(images):
        np.testing.assert_array_equal(reader.image_array(i), image)
        assert reader.labels(i).tolist() == [i, -i]
    reader.close()
    for name, entry in writer.checksums.items():
        offset, length = data_region(tmp_path / name)
        assert offset != 1 << 16 and entry["data_region"] == [offset, length]
        assert checksum(tmp_path / name, region=(offset, length)) == entry
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.skeleton"))


@pytest.mark.parametrize("gray", [False, True])
def test_two_decode_workers_transposing_into_shared_memory_store_what_one_process_stores(
    image_set, tmp_path, gray
):
    """With workers the converter's shared arena is used and the writer's encode_payload_into
    places each image's planar pixels there; the shards equal a one-process run's."""
    list_file, _ = image_set
    shards = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        convert(
            ConvertSpec(
                list_file=list_file,
                output=out,
                workers=workers,
                backend="hdf5",
                image=ImageOptions(gray=gray),
                backend_options={"shard_size": 5},
            )
        )
        shards[workers] = {}
        for shard in sorted(out.glob("part-*.h5")):
            with h5py.File(shard, "r") as f:
                shards[workers][shard.name] = {name: f[name][:] for name in f}
        assert verify_dataset(out).ok
    assert shards[1].keys() == shards[2].keys() and len(shards[1]) == 3
    for name, datasets in shards[1].items():
        for dataset, values in datasets.items():
            np.testing.assert_array_equal(shards[2][name][dataset], values)
    assert shards[1]["part-00000.h5"]["data"].shape[1] == (1 if gray else 3)


def test_encode_payload_into_writes_planar_pixels_or_declines():
    from mtldata.storage.backends.hdf5 import Hdf5Writer
    from mtldata.storage.records import ImagePayload

    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    buffer = memoryview(bytearray(100))
    described, size = Hdf5Writer.encode_payload_into(
        ImagePayload(hwc, False, (3, 4, 5)), np.float32([0]), buffer
    )
    assert size == 60 and not described.stored and described.shape == (3, 4, 5)
    np.testing.assert_array_equal(
        np.frombuffer(buffer[:60], np.uint8).reshape(3, 4, 5), hwc.transpose(2, 0, 1)
    )
    gray = hwc[:, :, 0].copy()
    _, size = Hdf5Writer.encode_payload_into(ImagePayload(gray, False, (1, 4, 5)), np.float32([0]), buffer)
    assert size == 20 and bytes(buffer[:20]) == gray.tobytes()
    planar = hwc.transpose(2, 0, 1).tobytes()
    _, size = Hdf5Writer.encode_payload_into(ImagePayload(planar, False, (3, 4, 5)), np.float32([0]), buffer)
    assert bytes(buffer[:size]) == planar
    assert (
        Hdf5Writer.encode_payload_into(ImagePayload(hwc, False, (3, 4, 5)), np.float32([0]), buffer[:59])
        is None
    )
    assert (
        Hdf5Writer.encode_payload_into(ImagePayload(b"\xff\xd8", True, (3, 4, 5)), np.float32([0]), buffer)
        is None
    )


@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 16, 16), (1, 1000, 1000)])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_hdf5_puts_an_allocated_data_at_one_offset_whatever_the_row_count(tmp_path, shape, dtype):
    """What the writer's fast path relies on (a probe of one row tells where every shard's rows go)."""
    from mtldata.storage.backends.hdf5_rows import allocate_contiguous

    offsets = set()
    for n in (1, 2, 7, 5000):
        with h5py.File(tmp_path / "probe.h5", "w", libver=("earliest", "v108")) as f:
            f.attrs["mtldata_data"] = "pixels"
            offsets.add(allocate_contiguous(f, "data", (n, *shape), np.dtype(dtype)).id.get_offset())
    assert len(offsets) == 1 and None not in offsets


def _samples(count: int, shape=(3, 6, 5)) -> list:
    from mtldata.storage.records import ImagePayload, Sample

    rng = np.random.default_rng(7)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        out.append(
            Sample(i, f"{i:08d}_s{i}", ImagePayload(pixels.tobytes(), False, shape), np.float32([i, 0.5 * i]))
        )
    return out


def _shards(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("part-*.h5")):
        with h5py.File(shard, "r") as f:
            out[shard.name] = {name: f[name][:] for name in f}
    return out


def _assert_same_shards(a: Path, b: Path) -> None:
    left, right = _shards(a), _shards(b)
    assert left.keys() == right.keys() and left
    for name in left:
        assert left[name].keys() == right[name].keys()
        for dataset in left[name]:
            np.testing.assert_array_equal(left[name][dataset], right[name][dataset])


def _reference(tmp_path: Path, samples: list, options) -> Path:
    from mtldata.storage.backends.hdf5 import Hdf5Writer

    ref = tmp_path / "ref"
    ref.mkdir()
    writer = Hdf5Writer(ref, options)
    for sample in samples:
        writer.put(sample)
    writer.close()
    return ref


def test_a_writer_that_died_after_a_commit_resumes_from_its_row_file_record_identical(tmp_path):
    """Uncompressed shards: the pending file names the rows, the row file (`part-N.h5.tmp`) holds
    their pixels; a new writer takes both back, truncates what was not committed, and goes on."""
    from mtldata.storage.backends import WriterOptions
    from mtldata.storage.backends.hdf5 import Hdf5Writer

    options = WriterOptions(num_labels=2, extra={"shard_size": 4})
    samples = _samples(10)
    ref = _reference(tmp_path, samples, options)
    out = tmp_path / "out"
    out.mkdir()
    writer = Hdf5Writer(out, options)
    for sample in samples[:6]:  # shard 0 sealed, 4 and 5 pending
        writer.put(sample)
    writer.commit()
    writer.put(samples[6])  # not committed
    writer._fh.close()  # the process dies
    writer._rows.close()
    pending = (out / "part-00001.pending").stat().st_size
    assert pending < 4 * 3 * 6 * 5  # the frames hold no pixels: they are in the row file
    assert (out / "part-00001.h5.tmp").is_file()
    writer = Hdf5Writer(out, options)
    assert writer.counts == [4] and writer.pending_count == 3
    assert (out / "part-00001.h5.tmp").is_file()  # kept: it holds the pending samples' pixels
    writer.truncate_from(6)  # the converter's resume: back to the last commit
    for sample in samples[6:]:
        writer.put(sample)
    files = writer.close()
    assert files["shard_counts"] == [4, 4, 2]
    _assert_same_shards(out, ref)
    for name, entry in writer.checksums.items():
        assert checksum(out / name, region=tuple(entry["data_region"])) == entry
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.pending"))


def test_a_pending_file_with_pixels_from_an_earlier_mtldata_resumes_record_identical(tmp_path):
    """An earlier mtldata kept every pending sample's pixels in the pending file and had no row file."""
    from mtldata.storage.backends import WriterOptions
    from mtldata.storage.backends.hdf5 import Hdf5Writer, _frame

    options = WriterOptions(num_labels=2, extra={"shard_size": 4, "hdf5_dtype": "uint8"})
    samples = _samples(6)
    ref = _reference(tmp_path, samples, options)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "part-00000.pending", "wb") as fh:
        for s in samples[:3]:
            fh.write(_frame(s.index, s.key, s.labels, s.image.data, s.image.shape))
        fh.write(b"\x05\x00")  # and a torn tail
    writer = Hdf5Writer(out, options)
    assert writer.pending_count == 3
    writer.truncate_from(3)
    for sample in samples[3:]:
        writer.put(sample)
    writer.close()
    _assert_same_shards(out, ref)


def test_a_row_file_gone_missing_is_one_error_that_says_to_start_over(tmp_path):
    from mtldata.errors import DatasetStateError
    from mtldata.storage.backends import WriterOptions
    from mtldata.storage.backends.hdf5 import Hdf5Writer

    options = WriterOptions(num_labels=2, extra={"shard_size": 4})
    samples = _samples(3)
    writer = Hdf5Writer(tmp_path, options)
    for sample in samples[:2]:
        writer.put(sample)
    writer.commit()
    writer._fh.close()
    writer._rows.close()
    os.truncate(tmp_path / "part-00000.h5.tmp", 100)  # its rows cut away
    writer = Hdf5Writer(tmp_path, options)
    with pytest.raises(DatasetStateError, match=r"part-00000.h5.tmp: row 0 is missing.*--overwrite"):
        writer.put(samples[2])


@pytest.mark.parametrize("where", ["just before the pixels", "file end"])
def test_a_shard_whose_structure_changed_is_not_handed_to_the_hdf5_library(
    image_set, tmp_path, where, monkeypatch
):
    # Old HDF5 libraries crash (SIGSEGV) reading some damaged heaps: verify must not read such a shard.
    list_file, _ = image_set
    out = tmp_path / "h5"
    hdf5(list_file, out, shard_size=5)
    shard = out / "part-00001.h5"
    offset, _ = data_region(shard)
    flip(shard, offset - 1 if where == "just before the pixels" else -1)
    opened: list[str] = []
    real_inspect = hdf5_backend.Hdf5Reader._inspect

    def inspect(path, line):
        opened.append(Path(path).name)
        return real_inspect(path, line)

    monkeypatch.setattr(hdf5_backend.Hdf5Reader, "_inspect", staticmethod(inspect))
    report = verify_dataset(out)
    problems = format_report(report, show=50)
    assert "part-00001.h5: its HDF5 structure (the bytes outside its pixel data) changed" in problems
    assert any(r.startswith("part-00001.h5: checksum mismatch") for r in checksum_problems(report))
    # the damaged shard is never opened; the others are, and verify as they are
    assert opened.count("part-00001.h5") == 0 and opened.count("part-00000.h5") == 1
    assert not [p for p in report.problems if p.key is not None]  # no record of the others is damaged
