"""Caffe's data layers: ImageData's list file and images as Caffe reads them, fed to a net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_layer_cases import net_param
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtldata.caffenet.layers.data import ImageListEntry, NetFeeder, read_image_list
from mtldata.caffenet.net import CaffeNet
from mtldata.caffenet.runner import train_from_solver
from mtldata.errors import DatasetFormatError
from mtldata.storage.image import caffe_resize


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """A lossless image file of exactly these pixels (HxWx3 RGB or HxW gray)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def rgb_images(root: Path, count: int, size: tuple[int, int] = (6, 5)) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        write_png(root / "imgs" / f"im {i}.png", pixels)  # a space in the name, as Caffe allows
        images.append(pixels)
    return images


def image_data_net(source: str, params: str = "", transform: str = "", batch: int = 3) -> str:
    return f"""
    name: "imgs"
    layer {{ name: "data" type: "ImageData" top: "data" top: "label"
      transform_param {{ {transform} }}
      image_data_param {{ source: "{source}" batch_size: {batch} {params} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    """


def feeder_for(tmp_path: Path, text: str) -> tuple[CaffeNet, NetFeeder]:
    (tmp_path / "net.prototxt").write_text(text)
    net = CaffeNet(tmp_path / "net.prototxt", "train")
    feeder = NetFeeder(net, [tmp_path])
    net.setup(feeder.peek_shapes())
    return net, feeder


def test_image_list_label_is_the_int_after_the_last_space(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a b.jpg 2\nc.jpg 7\r\nd.jpg 3.9\ne.jpg\t4\nf.jpg x\n")
    assert read_image_list(listing) == [
        ImageListEntry("a b.jpg", 2, 1),
        ImageListEntry("c.jpg", 7, 2),  # a CR stays after the digits; atoi stops there
        ImageListEntry("d.jpg", 3, 3),
        ImageListEntry("e.jpg\t4", 0, 4),  # no space: the whole line is the name (atoi of it: 0)
        ImageListEntry("f.jpg", 0, 5),
    ]


names = st.text(
    st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(names.filter(lambda s: s.strip()), st.integers(-(2**31), 2**31 - 1)), min_size=1, max_size=5
    )
)
def test_property_image_list_round_trips_name_and_label(tmp_path_factory, rows):
    listing = tmp_path_factory.mktemp("list") / "list.txt"
    listing.write_bytes(
        "".join(f"{name} {label}\n" for name, label in rows).encode("utf-8", "surrogateescape")
    )
    assert read_image_list(listing) == [ImageListEntry(n, lab, i) for i, (n, lab) in enumerate(rows, 1)]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_property_any_list_bytes_give_entries_or_one_error(tmp_path_factory, data):
    listing = tmp_path_factory.mktemp("list") / "list.txt"
    listing.write_bytes(data)
    try:
        entries = read_image_list(listing)
    except DatasetFormatError as exc:
        assert str(listing) in str(exc)
    else:
        assert entries and all(isinstance(e.label, int) for e in entries)


def test_image_list_blank_line_and_empty_file_are_errors(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg 1\n\nb.jpg 2\n")
    with pytest.raises(DatasetFormatError, match=r"list\.txt:2: a blank line"):
        read_image_list(listing)
    listing.write_text("")
    with pytest.raises(DatasetFormatError, match="empty"):
        read_image_list(listing)


def test_image_data_feeds_bgr_pixels_and_labels_in_list_order_wrapping_around(tmp_path):
    images = rgb_images(tmp_path, 4)
    (tmp_path / "list.txt").write_text("".join(f"im {i}.png {i % 3}\n" for i in range(4)))
    text = image_data_net("list.txt", 'root_folder: "imgs/"', "scale: 0.5 mean_value: 10")
    net, feeder = feeder_for(tmp_path, text)
    first, second = next(feeder), next(feeder)
    assert first["label"].tolist() == [0.0, 1.0, 2.0] and second["label"].tolist() == [0.0, 0.0, 1.0]
    bgr = [np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1)) for im in images]
    want = (np.stack([bgr[3], bgr[0], bgr[1]]).astype(np.float32) - 10) * 0.5
    np.testing.assert_array_equal(second["data"].numpy(), want)
    blobs = net(first)
    assert blobs["loss"].ndim == 0 and torch.isfinite(blobs["loss"])


def test_image_data_gray_and_resized_as_opencv(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    write_png(tmp_path / "g.png", gray)
    (tmp_path / "list.txt").write_text("g.png 1\n")
    text = image_data_net("list.txt", "is_color: false new_height: 4 new_width: 6", batch=2)
    _, feeder = feeder_for(tmp_path, text)
    batch = next(feeder)
    assert batch["data"].shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(batch["data"][0, 0].numpy(), caffe_resize(gray, 6, 4).astype(np.float32))


def test_image_data_names_the_list_line_of_a_missing_or_broken_image(tmp_path):
    rgb_images(tmp_path, 1)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    for broken, pattern in (
        ("missing.png", r"list\.txt:2: 'imgs/missing\.png' not found"),
        ("bad.png", r"list\.txt:2: .*bad\.png"),
    ):
        (tmp_path / "list.txt").write_text(f"imgs/im 0.png 0\nimgs/{broken} 1\n")
        _, feeder = feeder_for(tmp_path, image_data_net("list.txt", batch=1))
        next(feeder)
        with pytest.raises(DatasetFormatError, match=pattern):
            next(feeder)


def test_image_data_mixed_sizes_in_one_batch_are_refused(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((5, 4, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    _, feeder = feeder_for(tmp_path, image_data_net("list.txt", batch=2))
    with pytest.raises(DatasetFormatError, match=r"list\.txt:2: image of shape"):
        next(feeder)


def test_solver_trains_an_image_data_net(tmp_path):
    rgb_images(tmp_path, 4)
    (tmp_path / "list.txt").write_text("".join(f"im {i}.png {i % 3}\n" for i in range(4)))
    (tmp_path / "net.prototxt").write_text(image_data_net("list.txt", 'root_folder: "imgs/"', "scale: 0.01"))
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 display: 1 random_seed: 1 snapshot_after_train: false'
    )
    lines: list[str] = []
    solver = train_from_solver(tmp_path / "solver.prototxt", cwd=tmp_path, log=lines.append)
    assert solver.iter == 3
    assert any("Iteration 0, loss = " in line for line in lines)


def test_dummy_data_constant_once_and_random_fillers_every_forward():
    net = CaffeNet(
        net_param(
            'layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
            'data_filler { type: "constant" value: 2 } data_filler { type: "gaussian" std: 1 } '
            "shape { dim: 2 dim: 3 } shape { dim: 4 } } }"
        ),
        "train",
        input_shapes={},
    )
    first, second = net({}), net({})
    assert torch.equal(first["a"], torch.full((2, 3), 2.0)) and first["b"].shape == (4,)
    assert not torch.equal(first["b"], second["b"])
