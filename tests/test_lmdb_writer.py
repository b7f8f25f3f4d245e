"""The LMDB writer's batched path against its one-sample path, on real environments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import db_items
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.storage import record_digests
from mtldata.storage.backends import WriterOptions
from mtldata.storage.backends.lmdb import LmdbWriter
from mtldata.storage.records import ImagePayload, Sample


def samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        shape = (3, 40 + i % 3, 50)  # 40 of them fill the 64 KB map several times over
        pixels = rng.integers(0, 256, shape, dtype=np.uint8).tobytes()
        labels = np.float32([i % 4, rng.random(), np.nan if i % 5 == 0 else 1.0])
        out.append(Sample(i, f"{i:08d}_img{i}.jpg", ImagePayload(pixels, False, shape), labels))
    return out


def write(staging: Path, batches: list[list[Sample]], many: bool) -> dict:
    staging.mkdir()
    writer = LmdbWriter(staging, WriterOptions(num_labels=3, extra={"initial_map_size": 64 * 1024}))
    for batch in batches:
        if many:
            writer.put_many(batch)
        else:
            for sample in batch:
                writer.put(sample)
        writer.commit()
    writer.close()
    return writer.checksums


def test_put_many_stores_the_same_records_and_digests_as_put(tmp_path):
    # a small initial map: the batched path must grow it as the one-sample path does
    data = samples(40)
    batches = [data[:7], data[7:8], data[8:40]]
    one = write(tmp_path / "one", batches, many=False)
    many = write(tmp_path / "many", batches, many=True)
    assert one == many
    for db in ("images.lmdb", "labels.lmdb"):
        assert db_items(tmp_path / "many" / db) == db_items(tmp_path / "one" / db)
        journal = db + ".digests"
        assert (tmp_path / "many" / journal).read_bytes() == (tmp_path / "one" / journal).read_bytes()


@settings(max_examples=100, deadline=None, database=None)
@given(
    keys=st.lists(st.binary(min_size=0, max_size=40), max_size=30),
    torn=st.integers(min_value=0, max_value=60),
)
def test_whole_entries_counts_the_entries_a_digests_file_holds_and_where_they_end(keys, torn):
    data = b"".join(record_digests.entry(key, bytes(record_digests.SIZE)) for key in keys)
    tail = record_digests.entry(b"torn-away-key", bytes(record_digests.SIZE))[
        : torn % 33
    ]  # 33 bytes whole: always torn
    parsed = list(record_digests.entries(data + tail))
    assert record_digests.whole_entries(data + tail) == (len(keys), len(data))
    assert len(parsed) == len(keys) and (not parsed or parsed[-1][1] == len(data))


def test_the_journal_digest_equals_the_record_digest_across_read_blocks(tmp_path):
    from mtldata.storage.backends.lmdb import RecordDigest, _GrowingEnv

    env = _GrowingEnv(tmp_path / "images.lmdb", 1 << 20)
    keys = [f"{i:08d}_img/{i}.jpg".encode() for i in range(50_000)]  # a 2.3 MB journal: 3 blocks
    digests = [i.to_bytes(record_digests.SIZE, "little") for i in range(len(keys))]
    env._journal.write(b"".join(record_digests.entry(k, d) for k, d in zip(keys, digests, strict=True)))
    env._journal.write(b"\x40\x00\x00\x00torn")  # an entry cut short by a crash is not a record
    expected = RecordDigest()
    for key, digest in zip(keys, digests, strict=True):
        expected.update_hashed(key, digest)
    assert env.digest() == expected.result()
    env.abandon()


def test_a_new_journal_s_digest_is_kept_as_it_grows_and_a_resumed_one_is_read_back(tmp_path, monkeypatch):
    from mtldata.storage.backends import lmdb as lmdb_backend
    from mtldata.storage.backends.lmdb import RecordDigest, _GrowingEnv

    records = [(f"{i:08d}_img/{i}.jpg".encode(), bytes([i % 251]) * (100 + i), bytes(16)) for i in range(300)]
    expected = RecordDigest()
    for key, _, digest in records:
        expected.update_hashed(key, digest)
    reads = []
    whole_entries = record_digests.whole_entries
    monkeypatch.setattr(
        lmdb_backend.record_digests, "whole_entries", lambda data: reads.append(1) or whole_entries(data)
    )
    env = _GrowingEnv(tmp_path / "images.lmdb", 1 << 20)
    for start in range(0, 200, 70):
        env.put_many(records[start : min(start + 70, 200)])
        env.commit()
    assert env.digest() == {"records": 200, "sha256": _digest_of(records[:200])} and not reads
    env.close()
    resumed = _GrowingEnv(tmp_path / "images.lmdb", 1 << 20)  # the journal holds 200 entries already
    resumed.put_many(records[200:])
    resumed.commit()
    assert resumed.digest() == expected.result() and reads
    resumed.close()


def _digest_of(records) -> str:
    from mtldata.storage.backends.lmdb import RecordDigest

    digest = RecordDigest()
    for key, _, value_digest in records:
        digest.update_hashed(key, value_digest)
    return digest.result()["sha256"]
