"""`verify` on real converted datasets, intact and damaged by the test through the lmdb module."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner
from conftest import write_image, write_list

import mtldata.inspect.verify as verify_module
from mtldata.caffe.caffe_pb2 import Datum
from mtldata.caffe.datum import image_datum, label_datum
from mtldata.cli import main
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.errors import DatasetFormatError
from mtldata.inspect import lookahead
from mtldata.inspect.verify import format_report, verify_dataset
from mtldata.storage import record_digests
from mtldata.storage.backends.lmdb import database_digest
from mtldata.storage.image import ImageOptions


@pytest.fixture
def dataset(image_set, tmp_path) -> Path:
    list_file, _ = image_set
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1))
    return tmp_path / "ds"


@pytest.fixture
def hdf5_shards(image_set, tmp_path) -> Path:
    """The image set converted to HDF5 in 3 shards of 4 samples."""
    list_file, _ = image_set
    out = tmp_path / "h5"
    convert(
        ConvertSpec(
            list_file=list_file, output=out, workers=1, backend="hdf5", backend_options={"shard_size": 4}
        )
    )
    return out


def keys_of(db: Path) -> list[bytes]:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k in txn.cursor().iternext(values=False)]
    env.close()
    return keys


def edit(db: Path, put: dict[bytes, bytes] | None = None, delete: list[bytes] | None = None) -> None:
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in (put or {}).items():
            txn.put(key, value)
        for key in delete or []:
            assert txn.delete(key)
    env.close()


def get(db: Path, key: bytes) -> bytes:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        value = bytes(txn.get(key))
    env.close()
    return value


def record_problems(report):
    """The problems found in the records themselves, without the digest mismatches that any edit
    of a record also gives."""
    return [
        p
        for p in report.problems
        if "record digest mismatch" not in p.reason and "the conversion did not write" not in p.reason
    ]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_fresh_dataset_verifies(dataset):
    report = verify_dataset(dataset)
    assert report.ok, format_report(report)
    assert report.counts == {"images": 12, "labels": 12, "manifest": 12}
    assert report.problems == [] and report.notes == []
    assert "checksums (images.lmdb, labels.lmdb)" in report.checked
    assert "every record against its own digest" in report.checked
    assert format_report(report).endswith("OK")


def flip_byte_in_data_mdb(db: Path, value: bytes, at: int) -> None:
    """Flip one byte of `value` (a record's stored bytes) where it lies in data.mdb, as disk damage would."""
    raw = bytearray((db / "data.mdb").read_bytes())
    where = raw.find(value)
    assert where >= 0 and raw.find(value, where + 1) < 0
    raw[where + at] ^= 0x01
    (db / "data.mdb").write_bytes(bytes(raw))


def test_a_flipped_pixel_byte_in_data_mdb_is_named_by_its_key(dataset):
    images = dataset / "images.lmdb"
    key = keys_of(images)[6]
    value = get(images, key)
    flip_byte_in_data_mdb(images, value, len(value) // 2)  # inside the pixels: still a valid Datum
    report = verify_dataset(dataset)
    assert not report.ok
    assert report.bad_keys == [key.decode()]
    assert (
        report.problems[0].reason == "images.lmdb: record digest mismatch: its bytes changed since conversion"
    )
    assert any(
        p.key is None and p.reason.startswith("images.lmdb: checksum mismatch") for p in report.problems
    )


def test_a_record_added_after_conversion_is_named(dataset):
    edit(
        dataset / "images.lmdb",
        put={b"00000099_new.jpg": get(dataset / "images.lmdb", keys_of(dataset / "images.lmdb")[0])},
    )
    edit(
        dataset / "labels.lmdb",
        put={b"00000099_new.jpg": get(dataset / "labels.lmdb", keys_of(dataset / "labels.lmdb")[0])},
    )
    report = verify_dataset(dataset)
    assert report.bad_keys == ["00000099_new.jpg"]
    assert sorted(p.reason for p in report.problems if p.key is not None) == [
        "images.lmdb: a record the conversion did not write (not in its digests)",
        "labels.lmdb: a record the conversion did not write (not in its digests)",
    ]


def test_datasets_without_per_record_digests_still_verify_by_their_whole_db_checksums(dataset):
    # What a dataset converted before per-record digests looks like: no .digests files, and
    # checksum entries of {"records", "sha256"} only, made with sha256 digests of each value.
    manifest_path = dataset / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["checksums"]:
        manifest["checksums"][name] = database_digest(dataset / name, algorithm="sha256")
        (dataset / (name + ".digests")).unlink()
    manifest_path.write_text(json.dumps(manifest))
    report = verify_dataset(dataset)
    assert report.ok, format_report(report)
    assert "every record against its own digest" not in report.checked
    images = dataset / "images.lmdb"
    value = get(images, keys_of(images)[1])
    flip_byte_in_data_mdb(images, value, len(value) // 2)
    report = verify_dataset(dataset)
    assert [p.key for p in report.problems] == [None]
    assert record_problems(report)[0].reason.startswith("images.lmdb: checksum mismatch")


def test_a_dataset_with_sha256_record_digests_still_names_a_damaged_record(dataset):
    # What an earlier mtldata wrote: sha256 digests per record, the manifest naming sha256.
    manifest_path = dataset / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["checksums"]:
        db = dataset / name
        with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
            rows = [record_digests.entry(bytes(k), hashlib.sha256(v).digest()) for k, v in txn.cursor()]
        (dataset / (name + ".digests")).write_bytes(b"".join(rows))
        manifest["checksums"][name] = {
            **database_digest(db, algorithm="sha256"),
            "record_digest": "sha256",
            "record_digests": name + ".digests",
        }
    manifest_path.write_text(json.dumps(manifest))
    report = verify_dataset(dataset)
    assert report.ok, format_report(report)
    assert "every record against its own digest" in report.checked
    images = dataset / "images.lmdb"
    key = keys_of(images)[2]
    value = get(images, key)
    flip_byte_in_data_mdb(images, value, len(value) // 2)
    report = verify_dataset(dataset)
    assert key.decode() in [p.key for p in report.problems]


def test_the_manifest_records_a_digest_of_each_db(dataset, image_set, tmp_path):
    checksums = json.loads((dataset / "manifest.json").read_text())["checksums"]
    assert set(checksums) == {"images.lmdb", "labels.lmdb"}
    for name, recorded in checksums.items():
        assert recorded["records"] == 12 and len(recorded["sha256"]) == 64
        assert recorded["record_digest"] == "xxh3_128" and recorded["record_digests"] == name + ".digests"
        assert database_digest(dataset / name) == {k: recorded[k] for k in ("records", "sha256")}
    # The digest is of the records, not of data.mdb: a conversion with other workers agrees.
    convert(ConvertSpec(list_file=image_set[0], output=tmp_path / "ds2", workers=2))
    assert json.loads((tmp_path / "ds2" / "manifest.json").read_text())["checksums"] == checksums


def test_a_truncated_image_record_is_named(dataset):
    images = dataset / "images.lmdb"
    key = keys_of(images)[5]
    value = get(images, key)
    edit(images, put={key: value[: len(value) // 2]})
    report = verify_dataset(dataset)
    assert not report.ok
    assert report.bad_keys == [key.decode()]
    assert "not a Caffe Datum" in record_problems(report)[0].reason
    mismatch = [p for p in report.problems if p.key is None]
    assert len(mismatch) == 1 and mismatch[0].reason.startswith("images.lmdb: checksum mismatch")


def test_a_raw_image_with_too_few_pixels_is_named(dataset):
    images = dataset / "images.lmdb"
    key = keys_of(images)[2]
    # A well-formed Datum whose data is shorter than its shape says.
    short = Datum(channels=3, height=20, width=24, data=b"\x00" * 10, encoded=False)
    edit(images, put={key: short.SerializeToString()})
    report = verify_dataset(dataset)
    assert report.bad_keys == [key.decode()]
    assert "raw image holds 10 bytes, its shape 3x20x24 needs 1440" in record_problems(report)[0].reason


def test_a_label_db_with_a_missing_key_is_named(dataset):
    labels = dataset / "labels.lmdb"
    key = keys_of(labels)[7]
    edit(labels, delete=[key])
    report = verify_dataset(dataset)
    assert not report.ok
    assert report.bad_keys == [key.decode()]
    assert report.counts["labels"] == 11
    reasons = [p.reason for p in report.problems]
    assert reasons[0] == "no label record in labels.lmdb"
    assert "the manifest counts 12 samples but 11 label records were found" in reasons
    assert any(r.startswith("labels.lmdb: checksum mismatch") for r in reasons)


def test_a_label_without_an_image_is_named(dataset):
    labels = dataset / "labels.lmdb"
    edit(labels, put={b"00000003_zzz.jpg": get(labels, keys_of(labels)[3])})
    report = verify_dataset(dataset)
    assert report.bad_keys == ["00000003_zzz.jpg"]
    assert record_problems(report)[0].reason == "label record without an image record in images.lmdb"


def test_a_label_record_of_the_wrong_width_is_named(dataset):
    labels = dataset / "labels.lmdb"
    key = keys_of(labels)[0]
    edit(labels, put={key: label_datum([1.0, 2.0])})
    report = verify_dataset(dataset)
    assert report.bad_keys == [key.decode()]
    assert record_problems(report)[0].reason == "label record: holds 2 labels, the manifest says 4"


def test_encoded_records_are_decoded_and_a_corrupt_one_is_named(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "enc"
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, image=ImageOptions(encoded=True)))
    assert verify_dataset(out).ok
    key = keys_of(out / "images.lmdb")[4]
    edit(out / "images.lmdb", put={key: image_datum(b"\xff\xd8\xff" + b"\x00" * 64, 0, None)})
    report = verify_dataset(out)
    assert report.bad_keys == [key.decode()]
    assert record_problems(report)[0].reason.startswith("encoded image does not decode")


def test_encoded_jpegs_are_checked_at_one_eighth_scale_and_a_damaged_scan_is_still_named(
    tmp_path, monkeypatch
):
    # A file damaged in its scan passes --validate header and is stored; verify must name it.
    names = [write_image(tmp_path / f"{i}.jpg", size=(64, 48), seed=i).name for i in range(3)]
    damaged = bytearray((tmp_path / "1.jpg").read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 40] = b"\xff" * 40
    (tmp_path / "1.jpg").write_bytes(bytes(damaged))
    list_file = write_list(tmp_path / "list.txt", [f"{name} {i}" for i, name in enumerate(names)])
    out = tmp_path / "enc"
    options = ImageOptions(encoded=True, validate="header")
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, image=options))
    scaled = []
    real = verify_module.jpeg_decodes
    monkeypatch.setattr(verify_module, "jpeg_decodes", lambda *a: scaled.append(real(*a)) or scaled[-1])
    report = verify_dataset(out)
    assert report.bad_keys == ["00000001_1.jpg"]
    assert record_problems(report)[0].reason.startswith("encoded image does not decode")
    assert scaled[0] == scaled[2] == (3, 48, 64) and scaled[1] is None  # the damaged one decoded whole


def test_a_count_disagreeing_with_errors_tsv_is_reported(tmp_path):
    write_image(tmp_path / "a.png")
    list_file = write_list(tmp_path / "list.txt", ["a.png 1 2", "missing.png 3 4"])
    out = tmp_path / "ds"
    convert(ConvertSpec(list_file=list_file, output=out, workers=1))
    assert verify_dataset(out).ok  # one sample skipped and listed: consistent
    (out / "errors.tsv").write_text("", encoding="utf-8")
    report = verify_dataset(out)
    assert [p.reason for p in report.problems][0].startswith(
        "the manifest counts 1 skipped samples but errors.tsv lists 0"
    )


def test_plain_caffe_lmdbs_are_checked_without_a_manifest(dataset):
    report = verify_dataset(dataset / "images.lmdb", dataset / "labels.lmdb")
    assert report.ok and report.counts == {"images": 12, "labels": 12}
    assert report.notes == ["no manifest: counts and checksums not checked"]
    alone = verify_dataset(dataset / "images.lmdb")
    assert alone.ok and alone.counts == {"images": 12}


def test_only_the_first_problems_are_kept_but_all_are_counted(dataset):
    labels = dataset / "labels.lmdb"
    edit(labels, delete=keys_of(labels))
    report = verify_dataset(dataset, limit=5)
    assert report.problem_count == 12 + 2  # every key, the count, the checksum
    assert len(report.problems) == 5
    text = format_report(report, show=3)
    assert "FAILED: 14 problem(s)" in text and "... and 11 more" in text


def test_other_backends_are_checked_through_their_reader_and_file_checksums(image_set, tmp_path):
    list_file, _ = image_set
    out = tmp_path / "h5"
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, backend="hdf5"))
    report = verify_dataset(out)
    assert report.ok, format_report(report)
    assert report.counts == {"samples": 12, "manifest": 12}
    recorded = json.loads((out / "manifest.json").read_text())["checksums"]
    shard = next(name for name in recorded if name.endswith(".h5"))
    # Flip one byte near the end of the file (pixel data): the reader may not notice, the checksum does.
    raw = bytearray((out / shard).read_bytes())
    raw[-100] ^= 0xFF
    (out / shard).write_bytes(bytes(raw))
    report = verify_dataset(out)
    # the byte is outside the pixel data (the labels and keys follow it): the shard is not read, and
    # the samples it holds are not counted as missing
    reasons = [p.reason for p in report.problems]
    assert len(reasons) == 2
    assert reasons[0].startswith(f"{shard}: its HDF5 structure (the bytes outside its pixel data) changed")
    assert reasons[1].startswith(f"{shard}: checksum mismatch: expected bytes {len(raw)}, data_region")


def test_not_a_dataset_is_an_error(tmp_path):
    with pytest.raises(DatasetFormatError):
        verify_dataset(tmp_path)


def test_cli_exit_codes_and_bad_keys(dataset):
    ok = run("verify", dataset, "-q")
    assert ok.exit_code == 0 and ok.output.rstrip().endswith("OK")
    labels = dataset / "labels.lmdb"
    key = keys_of(labels)[1]
    edit(labels, delete=[key])
    bad = run("verify", dataset, "-q")
    assert bad.exit_code == 1
    assert f"{key.decode()}: no label record in labels.lmdb" in bad.output
    assert f"first bad keys: {key.decode()}" in bad.output


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_flipped_pixel_byte_in_an_hdf5_shard_is_named_by_its_key(image_set, tmp_path, dtype):
    import h5py

    list_file, _ = image_set
    out = tmp_path / "h5"
    convert(
        ConvertSpec(
            list_file=list_file, output=out, workers=1, backend="hdf5", backend_options={"hdf5_dtype": dtype}
        )
    )
    shard = out / "part-00000.h5"
    assert (out / "part-00000.h5.digests").is_file()
    recorded = json.loads((out / "manifest.json").read_text())["checksums"]["part-00000.h5"]
    assert recorded["record_digest"] == "xxh3_128" and recorded["record_digests"] == "part-00000.h5.digests"
    assert verify_dataset(out).ok
    with h5py.File(shard, "r") as f:
        data = f["data"]
        row_bytes = data[0].nbytes
        at = data.id.get_offset() + 4 * row_bytes + row_bytes // 2  # sample 4, mid-image
        key = f["key"].asstr()[4]
    raw = bytearray(shard.read_bytes())
    raw[at] ^= 0x01  # the lowest bit: for float32 pixels, a value no longer integral
    shard.write_bytes(bytes(raw))
    report = verify_dataset(out)
    assert report.bad_keys == [key]
    if dtype == "uint8":
        assert report.problems[0].reason == (
            "record digest mismatch: its pixels or labels changed since conversion"
        )
    else:  # the reader refuses it first
        assert "not integral pixels" in report.problems[0].reason
    assert any(p.key is None and "checksum mismatch" in p.reason for p in report.problems)


def test_threads_find_the_same_problems_in_the_same_order_as_a_plain_walk(tmp_path, monkeypatch):
    names = [f"img/{i:03d}.jpg" for i in range(90)]
    for i, name in enumerate(names):
        write_image(tmp_path / name, size=(20 + i % 3, 16), seed=i)
    list_file = write_list(tmp_path / "list.txt", [f"{name} {i % 4}" for i, name in enumerate(names)])
    out = tmp_path / "ds"
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, image=ImageOptions(encoded=True)))
    images, labels = out / "images.lmdb", out / "labels.lmdb"
    keys = keys_of(images)
    broken = {}
    for key in keys[5:80:9]:  # JPEGs cut short inside their Datum: decode and digest fail
        datum = Datum.FromString(get(images, key))
        datum.data = datum.data[: len(datum.data) // 2]
        broken[key] = datum.SerializeToString()
    edit(images, put=broken)
    edit(labels, delete=[keys[40], keys[70]])
    reports = {}
    monkeypatch.setattr(lookahead, "BATCH_ITEMS", 2)  # 45 batches: the read-ahead window fills
    for cores in (1, 4):
        monkeypatch.setattr(verify_module, "available_cores", lambda cores=cores: cores)
        reports[cores] = verify_dataset(out)
    assert [(p.key, p.reason) for p in reports[4].problems] == [
        (p.key, p.reason) for p in reports[1].problems
    ]
    found = {p.key for p in reports[4].problems if "does not decode" in p.reason}
    assert found == {key.decode() for key in broken}
    assert sum("no label record" in p.reason for p in reports[4].problems) == 2


def _damage_root_page(data: Path) -> None:
    """Zero the header of the main DB's root page in an LMDB data.mdb: LMDB then finds a page of the
    wrong type at the first read."""
    import struct

    from mtldata.storage.backends.lmdb import _META, _meta

    raw = bytearray(data.read_bytes())
    page = _meta(raw[: _META.size])["page_size"]
    # the newer of the two meta pages names the main DB's root page (MDB_db.md_root: the last field
    # of the main DB's record, which _meta skips, 8 bytes before the last page number)
    newer = max((0, 1), key=lambda p: _meta(raw[p * page : p * page + _META.size])["txnid"])
    root = struct.unpack_from("=Q", raw, newer * page + _META.size - 24)[0]
    raw[root * page : root * page + 16] = bytes(16)  # its page header: "wrong type"
    data.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("failed", "other", "other_check"),
    [
        ("images", "labels", "every label record parses"),
        ("labels", "images", "every image record decodes"),
    ],
)
def test_a_db_failing_at_its_root_is_the_one_problem_and_the_other_db_is_still_checked(
    dataset, failed, other, other_check
):
    _damage_root_page(dataset / f"{failed}.lmdb" / "data.mdb")
    report = verify_dataset(dataset)
    assert [p.reason.split(":")[0] for p in report.problems] == [f"{failed}.lmdb"]
    assert report.problems[0].reason.startswith(f"{failed}.lmdb: LMDB error after 0 of its records")
    # the other DB was walked to its end and its checksum held; the cut DB's count and checksum
    # are not reported as mismatches, since they cover only what was read before the error
    assert report.counts == {failed: None, other: 12, "manifest": 12}
    assert report.notes == [f"{failed}.lmdb: count and checksum not checked (an LMDB error stopped its walk)"]
    # and `checked` claims only what was
    assert report.checked == [
        "every record against its own digest",
        other_check,
        "counts match the manifest",
        f"checksums ({other}.lmdb)",
    ]


def test_a_damaged_image_record_is_named_after_the_label_db_failed(dataset):
    images = dataset / "images.lmdb"
    key = keys_of(images)[7]
    datum = Datum.FromString(get(images, key))
    datum.data = bytes(len(datum.data))
    edit(images, put={key: datum.SerializeToString()})
    _damage_root_page(dataset / "labels.lmdb" / "data.mdb")
    report = verify_dataset(dataset)
    assert report.problems[0].reason.startswith("labels.lmdb: LMDB error")
    assert report.bad_keys == [key.decode()]
    assert any("record digest mismatch" in p.reason for p in report.problems if p.key == key.decode())
    assert any(p.reason.startswith("images.lmdb: checksum mismatch") for p in report.problems)
    # no label is missing or unpaired: the label DB's records were not read
    assert not any("label record" in p.reason for p in report.problems)


def test_a_damaged_label_record_is_named_after_the_image_db_failed(dataset):
    labels = dataset / "labels.lmdb"
    key = keys_of(labels)[3]
    edit(labels, put={key: b"not a datum"})
    _damage_root_page(dataset / "images.lmdb" / "data.mdb")
    report = verify_dataset(dataset)
    assert report.problems[0].reason.startswith("images.lmdb: LMDB error")
    assert report.bad_keys == [key.decode()]
    assert any(p.reason.startswith("label record:") for p in report.problems if p.key == key.decode())
    assert not any("without an image record" in p.reason for p in report.problems)


def test_an_hdf5_shard_missing_or_cut_short_is_named_and_the_other_shards_are_read(hdf5_shards):
    out = hdf5_shards
    shards = sorted(p.name for p in out.glob("part-*.h5"))
    assert len(shards) == 3
    (out / shards[1]).unlink()
    size = (out / shards[2]).stat().st_size
    os.truncate(out / shards[2], size // 2)
    report = verify_dataset(out)
    assert [p.reason.split(", data_region")[0] for p in report.problems] == [
        f"{shards[1]}: missing (the manifest lists it); its records were not read",
        f"{shards[2]}: is {size // 2:,} bytes, {size:,} when converted: cut short; its records were not "
        "read (a damaged HDF5 file can crash the HDF5 library)",
        f"{shards[2]}: checksum mismatch: expected bytes {size}",
    ]
    assert report.counts == {"samples": 4, "manifest": 12}  # the first shard's 4, read and checked


def test_the_samples_of_an_unread_shard_do_not_excuse_a_count_that_is_still_wrong(hdf5_shards):
    out = hdf5_shards
    (out / "part-00001.h5").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["count"] = 13
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_dataset(out)
    assert (
        "the manifest counts 13 samples (4 of them in shards not read) but 8 sample records were found"
        in [p.reason for p in report.problems]
    )


@pytest.mark.parametrize("damage", ["cut", "removed"])
def test_a_damaged_or_missing_lmdb_digests_file_is_one_line_not_every_record(dataset, damage):
    digests = dataset / "images.lmdb.digests"
    if damage == "cut":
        digests.write_bytes(digests.read_bytes()[:100])
    else:
        digests.unlink()
    report = verify_dataset(dataset)
    only = "the records of images.lmdb were checked against the manifest's checksum only"
    if damage == "cut":
        assert [p.reason for p in report.problems] == [
            f"images.lmdb.digests: damaged (it does not hash to the manifest's checksum of images.lmdb); {only}"
        ]
    else:
        assert report.ok and report.notes == [f"images.lmdb.digests: missing; {only}"]
    assert "checksums (images.lmdb, labels.lmdb)" in report.checked  # the records still hash to it


@pytest.mark.parametrize("damage", ["cut", "removed"])
def test_a_damaged_or_missing_hdf5_digests_file_is_one_line_not_every_sample(hdf5_shards, damage):
    out = hdf5_shards
    digests = out / "part-00001.h5.digests"
    if damage == "cut":
        digests.write_bytes(digests.read_bytes()[:-5])
    else:
        digests.unlink()
    report = verify_dataset(out)
    only = "the samples of part-00001.h5 were checked against its checksum only"
    if damage == "cut":
        [line] = [p.reason for p in report.problems]
        assert line.startswith("part-00001.h5.digests: damaged (it holds 3 whole entries and ")
        assert line.endswith(f" bytes more, its shard 4 samples); {only}")
    else:
        assert report.ok and report.notes == [f"part-00001.h5.digests: missing; {only}"]
