"""open_dataset: targets, Caffe parity, uint8 batches, DataLoader workers (fork and spawn), samplers."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_image, write_list
from torch.utils.data import DataLoader, Subset

import mtldata
from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.loader.dataset import MultiTaskCollate, ShardedSequentialSampler, collate_uint8, open_dataset
from mtldata.loader.transforms import CaffeTransform, TransformError, TransformSpec
from mtldata.storage.image import ImageOptions, load_image, to_chw
from mtldata.tasks import LabelSlicer, TaskSet, TaskSpec, dump_tasks

MT_TASKS = TaskSet(
    (
        TaskSpec("cls", slice(0, 1), "softmax", classes=3, ignore_label=-1),
        TaskSpec("attr", slice(1, 4), "sigmoid"),
        TaskSpec("reg", slice(4, 5), "euclidean"),
    ),
    num_labels=5,
)
CAFFE_TRANSFORM = TransformSpec(scale=0.00390625, mean_values=(104, 117, 123))


def index_dataset(tmp_path: Path, n: int = 12, size: tuple[int, int] = (24, 20), **options) -> Path:
    """A converted dataset of n JPEGs whose labels are (i % 3, i % 2, 1 - i % 2, 0, i): the last
    column names the sample, so whoever reads it can tell which samples it saw."""
    lines = []
    for i in range(n):
        write_image(tmp_path / "images" / f"{i:03d}.jpg", size=size, seed=i)
        lines.append(f"images/{i:03d}.jpg {i % 3} {i % 2} {1 - i % 2} 0 {i}")
    list_file = write_list(tmp_path / "list.txt", lines)
    out = tmp_path / f"ds{len(list(tmp_path.glob('ds*')))}"  # one per call
    convert(ConvertSpec(list_file=list_file, output=out, workers=1, **options))
    return out


@pytest.fixture
def ds_path(tmp_path: Path) -> Path:
    return index_dataset(tmp_path)


def stored_pixels(tmp_path: Path, i: int) -> np.ndarray:
    return to_chw(load_image(tmp_path / "images" / f"{i:03d}.jpg"))


# --------------------------------------------------------------------------------------------------
# Caffe parity on the golden fixtures


def test_pair_through_a_dataloader_gives_caffe_slice_labels(caffe_fixtures, tmp_path):
    mt = caffe_fixtures / "mt"
    expected = json.loads((mt / "expected.json").read_text())
    toml = tmp_path / "tasks.toml"
    toml.write_text(dump_tasks(MT_TASKS), encoding="utf-8")
    for tasks in (MT_TASKS, toml):
        ds = open_dataset(mt / "img_lmdb", labels=mt / "label_lmdb", tasks=tasks, phase="test")
        assert len(ds) == 10 and [ds.key(i) for i in range(10)] == expected["keys"]
        batches = list(DataLoader(ds, batch_size=4, shuffle=False))
        for i in range(2):  # iterations 0 and 1: samples 0..3 and 4..7 (batch 2 wraps in Caffe)
            want = expected["iterations"][i]["labels"]
            assert expected["iterations"][i]["batch_sample_indices"] == list(range(4 * i, 4 * i + 4))
            _, targets = batches[i]
            cls = np.float32(want["label_cls"]).reshape(-1)
            assert targets["cls"].dtype == torch.int64
            assert targets["cls"].tolist() == [int(v) for v in cls]  # Caffe's static_cast<int>
            assert np.array_equal(targets["attr"].numpy(), np.float32(want["label_attr"]))
            assert np.array_equal(targets["reg"].numpy(), np.float32(want["label_reg"]))


def test_label_db_sliced_like_caffe_slice_layer(caffe_fixtures):
    mt = caffe_fixtures / "mt"
    expected = json.loads((mt / "expected.json").read_text())
    ds = open_dataset(mt / "img_lmdb", labels=mt / "label_lmdb", phase="test")
    _, targets = next(iter(DataLoader(ds, batch_size=4)))
    blob = targets["label"]  # the whole (N, 5) label blob, untouched
    assert blob.dtype == torch.float32 and blob.shape == (4, 5)
    assert np.array_equal(blob.numpy(), np.float32(expected["labels"][:4]))
    tops = LabelSlicer([1, 4], names=["label_cls", "label_attr", "label_reg"])(blob)
    for name, want in expected["iterations"][0]["labels"].items():
        assert np.array_equal(tops[name].numpy(), np.float32(want))


@pytest.mark.parametrize("phase", ["train", "test"])
def test_transform_equals_caffe_data_layer_output(caffe_fixtures, phase):
    mt = caffe_fixtures / "mt"
    with h5py.File(caffe_fixtures / "h5" / "train.h5", "r") as f:
        want_data, want_label = f["data"][:], f["label"][:]
    ds = open_dataset(mt / "img_lmdb", labels=mt / "label_lmdb", transform=CAFFE_TRANSFORM, phase=phase)
    images, targets = zip(*DataLoader(ds, batch_size=4), strict=True)
    got = torch.cat(images).numpy()
    assert got.dtype == np.float32 and np.array_equal(got, want_data)
    assert np.array_equal(torch.cat([t["label"] for t in targets]).numpy(), want_label)
    one, _ = ds[3]  # the single-sample path computes the same
    assert np.array_equal(one.numpy(), want_data[3])


def test_uint8_batches_transformed_on_the_batch_equal_caffe(caffe_fixtures):
    mt = caffe_fixtures / "mt"
    with h5py.File(caffe_fixtures / "h5" / "train.h5", "r") as f:
        want = f["data"][:]
    ds = open_dataset(mt / "img_lmdb", labels=mt / "label_lmdb", transform=CAFFE_TRANSFORM, output="uint8")
    batches = list(DataLoader(ds, batch_size=5, collate_fn=collate_uint8))
    assert all(b[0].dtype == torch.uint8 and b[0].shape == (5, 3, 32, 32) for b in batches)
    assert isinstance(ds.transform, CaffeTransform)
    got = torch.cat([ds.transform.apply_batch(images) for images, _ in batches]).numpy()
    assert np.array_equal(got, want)


def test_plain_caffe_lmdbs_raw_and_encoded(caffe_fixtures):
    dump = json.loads((caffe_fixtures / "lmdb_dump.json").read_text())["databases"]
    raw = open_dataset(caffe_fixtures / "lmdb" / "raw", output="uint8")
    records = dump["lmdb/raw"]["records"]
    assert len(raw) == len(records)
    for i, rec in enumerate(records):  # differently sized images: one at a time
        image, targets = raw[i]
        assert raw.key(i) == rec["key"]
        assert tuple(image.shape) == (rec["channels"], rec["height"], rec["width"])
        assert hashlib.sha256(image.numpy().tobytes()).hexdigest() == rec["data_sha256"]
        assert targets["label"].tolist() == [float(rec["label"])]
    encoded = open_dataset(caffe_fixtures / "lmdb" / "encoded", output="uint8")
    by_key = {raw.key(i): raw[i][0] for i in range(len(raw))}
    for i in range(len(encoded)):
        key = encoded.key(i)
        image, _ = encoded[i]
        if key.endswith("_gray.jpg"):  # Caffe decodes an encoded Datum as the file is: one channel
            assert image.shape[0] == 1 and torch.equal(image[0], by_key[key][0])
        elif key.endswith(".jpg"):
            assert torch.equal(image, by_key[key]), key


# --------------------------------------------------------------------------------------------------
# Datasets made here


def test_default_target_is_the_whole_label_vector(ds_path, tmp_path):
    ds = open_dataset(ds_path)
    assert len(ds) == 12 and ds.task_names == ("label",)
    image, targets = ds[5]
    assert image.dtype == torch.float32 and image.shape == (3, 20, 24)
    assert np.array_equal(image.numpy(), stored_pixels(tmp_path, 5).astype(np.float32))
    assert targets["label"].dtype == torch.float32 and targets["label"].tolist() == [2, 1, 0, 0, 5]
    assert torch.equal(ds[-1][1]["label"], ds[11][1]["label"])
    with pytest.raises(IndexError):
        ds[12]


def test_datasets_on_the_same_files_coexist(ds_path):
    # py-lmdb opens an environment once per process: the two views share one reader
    train = open_dataset(ds_path, transform=TransformSpec(crop_size=8, mirror=True))
    test = open_dataset(str(ds_path), phase="test", output="uint8")
    assert train.reader is test.reader
    assert train[0][0].shape == (3, 8, 8) and test[0][0].shape == (3, 20, 24)
    test.close()  # closing one reopens lazily for the other
    assert torch.equal(train[3][1]["label"], test[3][1]["label"])


def test_tasks_as_specs_as_taskset_and_from_toml_agree(ds_path, tmp_path):
    specs = [TaskSpec("c", slice(0, 1), "softmax", classes=3), TaskSpec("rest", slice(1, 5), "euclidean")]
    toml = tmp_path / "tasks.toml"
    toml.write_text(dump_tasks(TaskSet(tuple(specs), num_labels=5)), encoding="utf-8")
    results = []
    for tasks in (specs, TaskSet(tuple(specs), num_labels=5), toml, str(toml)):
        _, targets = open_dataset(ds_path, tasks=tasks)[4]
        results.append(targets)
        assert targets["c"].dtype == torch.int64 and targets["c"].ndim == 0 and int(targets["c"]) == 1
        assert targets["rest"].tolist() == [0, 1, 0, 4]
    assert all(torch.equal(r["rest"], results[0]["rest"]) for r in results)


def test_tasks_over_another_label_length_are_rejected(ds_path):
    bad = TaskSet((TaskSpec("a", slice(0, 2), "euclidean"),), num_labels=2)
    with pytest.raises(ValueError, match="num_labels = 2.*5 values"):
        open_dataset(ds_path, tasks=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"phase": "val"}, "phase must be one of"),
        ({"output": "half"}, "output must be one of"),
        ({"transform": 3}, "transform must be a TransformSpec or a callable"),
        ({"tasks": 3}, "tasks must be"),
    ],
)
def test_bad_arguments_name_the_argument(ds_path, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        open_dataset(ds_path, **kwargs)


def test_encoded_dataset_decodes_to_the_raw_pixels(tmp_path):
    raw = open_dataset(index_dataset(tmp_path), output="uint8")
    enc = open_dataset(index_dataset(tmp_path, image=ImageOptions(encoded=True)), output="uint8")
    for i in range(len(raw)):
        assert torch.equal(raw[i][0], enc[i][0])
    raw_batch, _ = collate_uint8(raw.__getitems__(range(6)))
    enc_batch, _ = collate_uint8(enc.__getitems__(range(6)))
    assert torch.equal(raw_batch, enc_batch) and raw_batch.is_contiguous()
    # decoded batches keep the decoder's HxWxC order in memory (no transpose on the loading core)
    assert enc_batch.is_contiguous(memory_format=torch.channels_last)
    as_float = open_dataset(enc.reader)[0][0]
    assert as_float.is_contiguous() and torch.equal(as_float, raw[0][0].float())
    gray = open_dataset(index_dataset(tmp_path, image=ImageOptions(encoded=True, gray=True)), output="uint8")
    image, _ = gray[2]
    want = load_image(tmp_path / "images" / "002.jpg", gray=True)
    assert image.shape == (1, 20, 24) and np.array_equal(image[0].numpy(), want)
    # force_color in the transform overrides the manifest's gray, as Caffe's force_color does
    forced = open_dataset(gray.reader, transform=TransformSpec(force_color=True), output="uint8")
    assert torch.equal(forced[2][0], raw[2][0])


def test_encoded_batch_of_mixed_sizes_and_formats_decodes_each_image_right(tmp_path):
    # JPEGs decode straight into their place in the batch; a PNG, or an image of another size
    # that turns the batch into a list, must still come out as its own pixels.
    sizes = [(24, 20), (24, 20), (24, 20), (24, 16), (24, 20)]
    names = ["0.jpg", "1.png", "2.jpg", "3.jpg", "4.jpg"]
    for k, (name, size) in enumerate(zip(names, sizes, strict=True)):
        write_image(tmp_path / "images" / name, size=size, seed=k)
    lst = write_list(tmp_path / "list.txt", [f"images/{n} {k}" for k, n in enumerate(names)])
    out = tmp_path / "ds"
    convert(ConvertSpec(list_file=lst, output=out, image=ImageOptions(encoded=True), workers=0))
    ds = open_dataset(out, output="uint8")
    want = [to_chw(load_image(tmp_path / "images" / n)) for n in names]
    batch = ds.__getitems__(range(5))
    assert [np.array_equal(img.numpy(), w) for (img, _), w in zip(batch, want, strict=True)] == [True] * 5
    same_size = ds.__getitems__([0, 1, 2, 4])
    images, _ = collate_uint8(same_size)
    assert torch.equal(images, torch.from_numpy(np.stack([want[k] for k in (0, 1, 2, 4)])))


def test_uint8_collate_and_pin_memory(ds_path, tmp_path):
    ds = open_dataset(ds_path, tasks=MT_TASKS, output="uint8")
    with warnings.catch_warnings():
        # On a machine without an accelerator DataLoader warns and skips pinning; the path still runs.
        warnings.simplefilter("ignore", UserWarning)
        loader = DataLoader(ds, batch_size=5, collate_fn=collate_uint8, pin_memory=True)
        batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    images, targets = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 20, 24)
    assert np.array_equal(images[3].numpy(), stored_pixels(tmp_path, 3))
    assert targets["cls"].tolist() == [0, 1, 2, 0, 1] and targets["attr"].shape == (5, 3)
    assert targets["reg"].tolist() == [[0], [1], [2], [3], [4]]
    # the same through Subset (which forwards __getitems__) and through the per-item fallback
    sub = list(DataLoader(Subset(ds, [3, 4]), batch_size=2, collate_fn=collate_uint8))[0]
    assert torch.equal(sub[0], images[3:5])
    pairs = [ds[i] for i in range(5)]
    again = collate_uint8(pairs)
    assert torch.equal(again[0], images) and torch.equal(again[1]["reg"], targets["reg"])


def test_collate_uint8_rejects_mixed_sizes():
    batch = [(torch.zeros(3, 4, 4, dtype=torch.uint8), {}), (torch.zeros(3, 5, 4, dtype=torch.uint8), {})]
    with pytest.raises(ValueError, match="differ in shape"):
        collate_uint8(batch)


def test_random_crop_and_mirror_are_seeded(ds_path):
    spec = TransformSpec(crop_size=16, mirror=True)

    def run(seed: int) -> torch.Tensor:
        ds = open_dataset(ds_path, transform=spec, seed=seed)
        return torch.cat([x for x, _ in DataLoader(ds, batch_size=4)])

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (12, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    test = open_dataset(ds_path, transform=TransformSpec(crop_size=16), phase="test")
    centre = test[0][0]  # test phase: the centred crop, (20-16)//2 and (24-16)//2
    assert torch.equal(centre, open_dataset(ds_path)[0][0][:, 2:18, 4:20])


def test_dataset_pickles_without_handles_after_use(ds_path):
    ds = open_dataset(ds_path, transform=TransformSpec(crop_size=8, mirror=True))
    first = ds[0][1]["label"]
    clone = pickle.loads(pickle.dumps(ds))
    ds.close()  # one process may hold an LMDB open once; a spawned worker is another process
    assert torch.equal(clone[0][1]["label"], first) and len(clone) == 12


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_fork_and_spawn_with_persistent_workers(ds_path, context):
    ds = open_dataset(ds_path, tasks=MT_TASKS, output="uint8")
    reference = list(DataLoader(ds, batch_size=3, collate_fn=collate_uint8))  # opens the env in the parent
    assert ds.reader._pid is not None  # a handle exists that a forked worker could inherit
    loader = DataLoader(
        ds,
        batch_size=3,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
        collate_fn=collate_uint8,
    )
    for _epoch in range(2):
        got = list(loader)
        assert len(got) == len(reference)
        for (x, t), (rx, rt) in zip(got, reference, strict=True):
            assert torch.equal(x, rx)
            assert all(torch.equal(t[name], rt[name]) for name in MT_TASKS.names)
    del loader
    assert torch.equal(ds[1][0], reference[0][0][1])  # the parent's own handle still works


def test_batch_memory_is_recycled_only_once_released(ds_path):
    ds = open_dataset(ds_path, output="uint8")
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_uint8)
    held = list(loader)
    copies = [x.clone() for x, _ in held]
    views = [x[0, 1] for x, _ in list(loader)]  # only a view of each batch survives
    pointers = []
    for _epoch in range(3):
        for x, _ in loader:
            pointers.append(x.data_ptr())
    assert all(torch.equal(x, c) for (x, _), c in zip(held, copies, strict=True))  # never refilled
    assert all(torch.equal(v, c[0, 1]) for v, c in zip(views, copies, strict=True))
    assert not {x.data_ptr() for x, _ in held} & set(pointers)
    assert len(set(pointers)) < len(pointers)  # released batches' memory was used again


def _shm_inode(tensor: torch.Tensor) -> str:
    """The inode of the shared-memory file a tensor received from a worker is mapped from."""
    ptr = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(v, 16) for v in fields[0].split("-"))
        if low <= ptr < high:
            return fields[4]
    raise AssertionError("storage not found in /proc/self/maps")


def _same_batch(batch: tuple[torch.Tensor, dict], reference: tuple[torch.Tensor, dict]) -> bool:
    """Whether a loader's batch equals a reference batch, images and every task's targets."""
    (x, t), (rx, rt) = batch, reference
    return torch.equal(x, rx) and all(torch.equal(t[n], rt[n]) for n in MT_TASKS.names)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("output", ["uint8", "float"])
def test_reused_shared_memory_never_overwrites_a_held_batch(ds_path, output):
    ds = open_dataset(ds_path, tasks=MT_TASKS, output=output)
    reference = list(DataLoader(ds, batch_size=2, collate_fn=collate_uint8))
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",
        collate_fn=MultiTaskCollate(reuse_shared_memory=True, pool_size=6),
    )

    def same(batch: tuple[torch.Tensor, dict], k: int) -> bool:
        return _same_batch(batch, reference[k])

    held = list(loader)  # an epoch kept whole (3 batches a worker): none may be refilled under it
    inodes = []
    for _epoch in range(3):  # then batches dropped one by one: their buffers come back
        for k, batch in enumerate(loader):
            assert same(batch, k)
            inodes.append(_shm_inode(batch[0]))
    assert all(same(batch, k) for k, batch in enumerate(held))
    assert not {_shm_inode(x) for x, _ in held} & set(inodes)
    assert len(set(inodes)) < len(inodes)  # the workers refilled the other buffers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no accelerator: pinning is skipped
        pinned = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=loader.collate_fn, pin_memory=True)
        assert all(same(batch, k) for k, batch in enumerate(pinned))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("output", ["uint8", "float"])
def test_default_collate_reuses_worker_memory_but_never_under_a_held_or_forwarded_batch(ds_path, output):
    from multiprocessing.reduction import ForkingPickler

    ds = open_dataset(ds_path, tasks=MT_TASKS, output=output)
    reference = list(DataLoader(ds, batch_size=2, collate_fn=collate_uint8))
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",
        collate_fn=MultiTaskCollate(pool_size=8),  # collate_uint8's mode, room for two held epochs
    )

    def same(batch: tuple[torch.Tensor, dict], k: int) -> bool:
        return _same_batch(batch, reference[k])

    held = list(loader)  # 3 batches a worker, kept whole
    forwarded = list(loader)
    for x, _ in forwarded:
        # Not shared as far as torch is concerned: a multiprocessing queue copies it out of the
        # worker's buffer (into fresh shared memory, in place) instead of passing the buffer on.
        assert not x.untyped_storage().is_shared()
        inode = _shm_inode(x)
        ForkingPickler.dumps(x)
        assert x.untyped_storage().is_shared() and _shm_inode(x) != inode
    inodes = []
    for _epoch in range(3):
        for k, batch in enumerate(loader):
            assert same(batch, k)
            inodes.append(_shm_inode(batch[0]))
            # the small targets travel inside the message, not as shared memory of their own
            assert not any(t.is_shared() for t in batch[1].values())
    assert all(same(batch, k) for k, batch in enumerate(held))
    assert all(same(batch, k) for k, batch in enumerate(forwarded))
    assert not {_shm_inode(x) for x, _ in held + forwarded} & set(inodes)
    assert len(set(inodes)) < len(inodes)  # the workers refilled released buffers


def test_collate_options_are_checked():
    with pytest.raises(ValueError, match="pool_size must be >= 1"):
        MultiTaskCollate(reuse_shared_memory=True, pool_size=0)
    assert "reuse_shared_memory=False" in repr(collate_uint8)


def test_workers_draw_different_reproducible_crops(tmp_path):
    write_image(tmp_path / "same.jpg", size=(24, 20))
    list_file = write_list(tmp_path / "list.txt", ["same.jpg 0"] * 8)  # 8 copies of one image
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "ds", workers=1))
    ds = open_dataset(tmp_path / "ds", transform=TransformSpec(crop_size=8, mirror=True))

    def run() -> torch.Tensor:
        torch.manual_seed(7)
        loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
        return torch.stack([x for x, _ in loader])

    a, b = run(), run()
    assert torch.equal(a, b)  # reproducible under torch.manual_seed
    # worker 0 made batches 0 and 2, worker 1 batches 1 and 3: the same pixels, different crops
    assert not torch.equal(a[0], a[1])


def test_caffe_hdf5_file_of_float_inputs(caffe_fixtures):
    h5 = caffe_fixtures / "h5"
    with h5py.File(h5 / "train.h5", "r") as f:
        data, label = f["data"][:], f["label"][:]
    for source in (h5 / "train.h5", h5 / "list.txt"):  # the file, or HDF5Data's source list
        ds = open_dataset(source, tasks=MT_TASKS)
        images, targets = next(iter(DataLoader(ds, batch_size=4)))
        assert images.dtype == torch.float32 and np.array_equal(images.numpy(), data[:4])
        assert targets["cls"].tolist() == [1, 1, -1, 0]
        assert np.array_equal(targets["attr"].numpy(), label[:4, 1:4])
    doubled = open_dataset(h5 / "train.h5", transform=lambda x: x * 2)
    assert np.array_equal(doubled[1][0].numpy(), data[1] * 2)
    with pytest.raises(TransformError, match="HDF5Data layer takes no transform_param"):
        open_dataset(h5 / "train.h5", transform=CAFFE_TRANSFORM)[0]
    with pytest.raises(TransformError, match="output='uint8' needs uint8"):
        open_dataset(h5 / "train.h5", output="uint8")[0]


def test_hdf5_dataset_reads_like_the_lmdb_one(tmp_path):
    lmdb_ds = open_dataset(index_dataset(tmp_path), tasks=MT_TASKS, transform=CAFFE_TRANSFORM)
    h5_ds = open_dataset(index_dataset(tmp_path, backend="hdf5"), tasks=MT_TASKS, transform=CAFFE_TRANSFORM)
    assert len(h5_ds) == len(lmdb_ds)
    assert torch.equal(h5_ds[0][0], lmdb_ds[0][0])  # the parent holds an open file before the fork
    a = list(DataLoader(lmdb_ds, batch_size=5))
    b = list(DataLoader(h5_ds, batch_size=5, num_workers=2, multiprocessing_context="fork"))
    for (x, t), (y, u) in zip(a, b, strict=True):
        assert torch.equal(x, y)
        assert all(torch.equal(t[n], u[n]) for n in MT_TASKS.names)


def test_lazy_package_exports():
    assert mtldata.open_dataset is open_dataset
    assert mtldata.LabelSlicer is LabelSlicer
    assert "open_dataset" in mtldata.__all__ and "LabelSlicer" in mtldata.__all__


# --------------------------------------------------------------------------------------------------
# ShardedSequentialSampler


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize(("n", "replicas"), [(12, 2), (13, 2), (10, 3), (2, 4), (0, 2)])
def test_sharded_sequential_sampler_covers_in_key_order(layout, n, replicas):
    shares = [list(ShardedSequentialSampler(n, replicas, r, layout=layout)) for r in range(replicas)]
    per = -(-n // replicas)
    assert all(len(s) == per for s in shares)
    assert all(len(ShardedSequentialSampler(n, replicas, r)) == per for r in range(replicas))
    # together: every sample once, plus padding that wraps to the first samples (as Caffe's reader)
    positions = range(per * replicas)
    assert sorted(i for s in shares for i in s) == sorted(p % n for p in positions) if n else True
    if n and layout == "strided":  # rank r: positions r, r + R, ... (Caffe's multi-GPU Data layer)
        assert shares == [[p % n for p in positions[r::replicas]] for r in range(replicas)]
    elif n:  # rank r: one block of consecutive positions
        assert [i for s in shares for i in s] == [p % n for p in positions]
    dropped = [
        list(ShardedSequentialSampler(n, replicas, r, layout=layout, drop_last=True)) for r in range(replicas)
    ]
    flat = [i for s in dropped for i in s]
    assert len(flat) == len(set(flat)) == (n // replicas) * replicas  # disjoint, tail dropped
    assert all(share == sorted(share) for share in dropped)  # key order


def test_sharded_sampler_checks_its_arguments():
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedSequentialSampler(10, 2, 2)
    with pytest.raises(ValueError, match="layout must be one of"):
        ShardedSequentialSampler(10, 2, 0, layout="random")
    sampler = ShardedSequentialSampler(10)  # no process group: the whole dataset
    assert list(sampler) == list(range(10))
    sampler.set_epoch(3)
    assert list(sampler) == list(range(10))
