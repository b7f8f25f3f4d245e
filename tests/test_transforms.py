"""CaffeTransform: bit-identical to Caffe's DataTransformer on golden fixtures; its crop and mirror rules."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CAFFE_FIXTURES

from mtldata.errors import MtlDataError
from mtldata.loader.transforms import CaffeTransform, TransformError, TransformSpec

FIXTURES = CAFFE_FIXTURES


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.skip(f"Caffe golden fixtures not found at {FIXTURES}")
    return FIXTURES


def _read_images(db: Path) -> list[np.ndarray]:
    lmdb = pytest.importorskip("lmdb")
    from mtldata.caffe.datum import datum_pixels, parse_datum

    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [datum_pixels(parse_datum(value)) for _, value in txn.cursor()]
    finally:
        env.close()


def _image(c: int = 3, h: int = 5, w: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)


# --- against real Caffe ----------------------------------------------------------------------------


def test_lmdb_data_layer_output_equals_train_h5(fixtures):
    h5py = pytest.importorskip("h5py")
    from google.protobuf import text_format

    from mtldata.caffe import caffe_pb2

    net = text_format.Parse((fixtures / "mt" / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    (data_layer,) = [layer for layer in net.layer if layer.name == "data"]
    spec = TransformSpec.from_caffe(data_layer.transform_param)
    assert spec == TransformSpec(scale=0.00390625, mean_values=(104.0, 117.0, 123.0))
    with h5py.File(fixtures / "h5" / "train.h5", "r") as f:
        expected = f["data"][:]
    images = _read_images(fixtures / "mt" / "img_lmdb")
    assert len(images) == len(expected) == 10
    for phase in ("train", "test"):  # no crop, no mirror: both phases are deterministic
        transform = CaffeTransform(spec, phase)
        singles = torch.stack([transform(img) for img in images])
        assert singles.dtype == torch.float32
        assert np.array_equal(singles.numpy(), expected)
        batch = transform.apply_batch(torch.from_numpy(np.stack(images)))
        assert np.array_equal(batch.numpy(), expected)


@pytest.mark.parametrize("crop, scale", [(20, 0.017), (19, 1.0), (0, 0.00390625)])
def test_mean_file_with_centred_crop(fixtures, crop, scale):
    pytest.importorskip("mtldata.caffe.blob")
    dump = json.loads((fixtures / "lmdb_dump.json").read_text())["mean_binaryproto"]
    mean = np.array(dump["data"], dtype=np.float32).reshape(dump["channels"], dump["height"], dump["width"])
    images = _read_images(fixtures / "lmdb" / "resized")
    assert images[0].shape == mean.shape == (3, 24, 24)
    spec = TransformSpec(scale=scale, crop_size=crop, mean_file=str(fixtures / "mean.binaryproto"))
    transform = CaffeTransform(spec, "test")
    off = (24 - crop) // 2 if crop else 0  # Caffe: (H - crop) / 2, integer division
    size = crop or 24
    window = (slice(None), slice(off, off + size), slice(off, off + size))
    for img in images:
        want = (img[window].astype(np.float32) - mean[window]) * np.float32(scale)
        assert want.dtype == np.float32
        assert np.array_equal(transform(img).numpy(), want)
    batch = transform.apply_batch(np.stack(images))
    assert np.array_equal(batch.numpy(), np.stack([transform(img).numpy() for img in images]))


# --- crop and mirror semantics ---------------------------------------------------------------------


def test_test_phase_crop_is_centred_with_integer_division():
    img = _image(h=6, w=7)
    out = CaffeTransform(TransformSpec(crop_size=3), "test")(img)
    assert np.array_equal(out.numpy(), img[:, 1:4, 2:5].astype(np.float32))  # (6-3)//2, (7-3)//2


def test_train_phase_crop_reaches_every_offset():
    img = _image(c=2, h=5, w=6)
    transform = CaffeTransform(TransformSpec(crop_size=3), "train")
    windows = {(h, w): img[:, h : h + 3, w : w + 3].astype(np.float32) for h in range(3) for w in range(4)}
    seen = set()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for i in range(200):
        out = transform(img, rng=gen if i % 2 else rng).numpy()
        match = [pos for pos, window in windows.items() if np.array_equal(out, window)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(windows)


@pytest.mark.parametrize("phase", ["train", "test"])
def test_mirror_is_random_in_both_phases(phase):
    img = _image()
    transform = CaffeTransform(TransformSpec(mirror=True), phase)
    plain, flipped = img.astype(np.float32), img[:, :, ::-1].astype(np.float32)
    gen = torch.Generator().manual_seed(1)
    outs = [transform(img, rng=gen).numpy() for _ in range(40)]
    assert all(np.array_equal(o, plain) or np.array_equal(o, flipped) for o in outs)
    assert any(np.array_equal(o, plain) for o in outs) and any(np.array_equal(o, flipped) for o in outs)


def test_no_mirror_no_crop_draws_nothing():
    transform = CaffeTransform(TransformSpec(scale=2.0), "train")
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    transform(_image(), rng=gen)
    assert torch.equal(gen.get_state(), state)


def test_mean_file_is_cropped_and_mirrored_with_the_pixels(tmp_path):
    blob = pytest.importorskip("mtldata.caffe.blob")
    img = _image(h=5, w=6, seed=2)
    mean = np.random.default_rng(3).uniform(0, 255, (3, 5, 6)).astype(np.float32)
    blob.write_blob_proto(tmp_path / "mean.binaryproto", mean[None])
    spec = TransformSpec(scale=0.5, crop_size=3, mirror=True, mean_file=str(tmp_path / "mean.binaryproto"))
    transform = CaffeTransform(spec, "train")
    out = transform.apply(img, h_off=2, w_off=1, mirror=True)
    want = ((img[:, 2:5, 1:4].astype(np.float32) - mean[:, 2:5, 1:4]) * np.float32(0.5))[:, :, ::-1]
    assert np.array_equal(out.numpy(), want)
    with pytest.raises(TransformError, match="uncropped size"):
        transform(_image(h=6, w=6))


def test_mean_values_one_for_all_channels_or_one_each():
    img = _image()
    one = CaffeTransform(TransformSpec(mean_values=(100,), scale=0.25), "test")(img)
    assert np.array_equal(one.numpy(), (img.astype(np.float32) - 100) * np.float32(0.25))
    each = CaffeTransform(TransformSpec(mean_values=(1, 2, 3)), "test")(img)
    assert np.array_equal(
        each.numpy(), img.astype(np.float32) - np.array([1, 2, 3], np.float32)[:, None, None]
    )
    with pytest.raises(TransformError, match="1 mean_value or as many as channels"):
        CaffeTransform(TransformSpec(mean_values=(1, 2)), "test")(img)


def test_rgb_order_flips_channels_after_the_bgr_mean():
    img = _image()
    bgr = CaffeTransform(TransformSpec(mean_values=(1, 2, 3), scale=0.5), "test")(img)
    rgb_transform = CaffeTransform(
        TransformSpec(mean_values=(1, 2, 3), scale=0.5, channel_order="rgb"), "test"
    )
    rgb = rgb_transform(img)
    assert torch.equal(rgb, bgr.flip(0))
    assert np.array_equal(
        rgb[0].numpy(), (img[2].astype(np.float32) - 3) * np.float32(0.5)
    )  # R: stored last, third mean
    batch = rgb_transform.apply_batch(torch.from_numpy(np.stack([img, img])))
    assert torch.equal(batch[1], rgb)


# --- batched transform -----------------------------------------------------------------------------


def test_apply_batch_equals_per_sample_apply():
    images = np.stack([_image(h=8, w=9, seed=s) for s in range(6)])
    spec = TransformSpec(crop_size=5, mirror=True, mean_values=(104, 117, 123), scale=0.017)
    transform = CaffeTransform(spec, "train")
    params = transform.crop_params(6, 8, 9, torch.Generator().manual_seed(7))
    batch = transform.apply_batch(torch.from_numpy(images), params=params)
    assert batch.shape == (6, 3, 5, 5) and batch.dtype == torch.float32
    h_off, w_off, mirror = params
    assert mirror.any() and not mirror.all()  # this seed exercises both branches
    for i in range(6):
        one = transform.apply(images[i], int(h_off[i]), int(w_off[i]), bool(mirror[i]))
        assert torch.equal(batch[i], one)
    # The same generator state gives the same batch, and __call__ draws as a batch of one.
    again = transform.apply_batch(torch.from_numpy(images), torch.Generator().manual_seed(7))
    assert torch.equal(again, batch)
    single = transform(images[0], rng=torch.Generator().manual_seed(11))
    assert torch.equal(single, transform.apply_batch(images[:1], torch.Generator().manual_seed(11))[0])


def test_apply_batch_test_phase_equals_call():
    images = np.stack([_image(h=8, w=9, seed=s) for s in range(4)])
    transform = CaffeTransform(TransformSpec(crop_size=5, mean_values=(10,), scale=0.5), "test")
    batch = transform.apply_batch(torch.from_numpy(images))
    assert torch.equal(batch, torch.stack([transform(img) for img in images]))
    assert transform.apply_batch(images[:0]).shape == (0, 3, 5, 5)


# --- spec and input checks -------------------------------------------------------------------------


def test_from_caffe_reads_every_field():
    from mtldata.caffe import caffe_pb2

    param = caffe_pb2.TransformationParameter(
        scale=0.017, mirror=True, crop_size=227, mean_file="m.binaryproto"
    )
    spec = TransformSpec.from_caffe(param, channel_order="rgb")
    assert spec.scale == float(np.float32(0.017)) and spec.mirror and spec.crop_size == 227
    assert (spec.mean_file, spec.mean_values, spec.channel_order) == ("m.binaryproto", (), "rgb")
    assert TransformSpec.from_caffe(caffe_pb2.TransformationParameter()) == TransformSpec()
    gray = TransformSpec.from_caffe(caffe_pb2.TransformationParameter(force_gray=True))
    assert gray.force_gray and not gray.force_color
    with pytest.raises(TypeError, match="TransformationParameter"):
        TransformSpec.from_caffe(caffe_pb2.Datum())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mean_file": "m.binaryproto", "mean_values": (1.0,)}, "mean_file and mean_values"),
        ({"force_color": True, "force_gray": True}, "force_color and force_gray"),
        ({"crop_size": -1}, "crop_size"),
        ({"scale": float("nan")}, "scale"),
        ({"channel_order": "RGB"}, "channel_order"),
    ],
)
def test_spec_rejects_what_caffe_rejects(kwargs, message):
    with pytest.raises(TransformError, match=message) as err:
        TransformSpec(**kwargs)
    assert isinstance(err.value, MtlDataError) and isinstance(err.value, ValueError)


def test_input_checks():
    transform = CaffeTransform(TransformSpec(crop_size=4), "train")
    with pytest.raises(TransformError, match="larger than the 3x6 image"):
        transform(_image(h=3, w=6))
    with pytest.raises(TransformError, match="uint8"):
        transform(_image().astype(np.float32))
    with pytest.raises(TransformError, match=r"\(C, H, W\)"):
        transform(_image()[0])
    with pytest.raises(TransformError, match="phase"):
        CaffeTransform(TransformSpec(), "TRAIN")
    with pytest.raises(TransformError, match="does not fit"):
        transform.apply(_image(h=5, w=6), h_off=2, w_off=0)


def test_read_only_buffers_are_accepted_without_warnings():
    img = _image()
    frozen = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(img.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = CaffeTransform(TransformSpec(), "test")(frozen)
    assert np.array_equal(out.numpy(), img.astype(np.float32))
