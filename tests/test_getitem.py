"""`ds[i]` (read on its own) returns the same tensors as the batched path DataLoader uses."""

from __future__ import annotations

import pytest
import torch
from conftest import write_image, write_list

from mtldata.convert.pipeline import ConvertSpec, convert
from mtldata.loader.dataset import open_dataset
from mtldata.loader.transforms import TransformSpec
from mtldata.storage.image import ImageOptions
from mtldata.tasks import TaskSet, TaskSpec

TASKS = TaskSet(
    (TaskSpec("cls", slice(0, 1), "softmax", classes=3), TaskSpec("rest", slice(1, 3), "euclidean")), 3
)


@pytest.fixture(params=["jpg", "png", "png-gray"])
def images(request, tmp_path):
    kind = request.param
    suffix = "jpg" if kind == "jpg" else "png"
    rows = []
    for i in range(6):
        name = f"im{i}.{suffix}"
        write_image(
            tmp_path / name,
            size=(28, 28) if kind != "jpg" else (40, 32),
            seed=i,
            mode="L" if kind == "png-gray" else "RGB",
        )
        rows.append(f"{name} {i % 3} {0.5 * i} {-i}")
    return write_list(tmp_path / "list.txt", rows), kind


def same(a, b):
    assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape and torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert a[1][name].dtype == b[1][name].dtype and torch.equal(a[1][name], b[1][name])


@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {"output": "uint8"},
        {"output": "float"},
        {"output": "uint8", "tasks": TASKS},
        {
            "tasks": TASKS,
            "phase": "test",
            "transform": TransformSpec(scale=0.5, mean_values=(10,), crop_size=20),
        },
        {"transform": TransformSpec(mirror=True, crop_size=16), "phase": "train", "seed": 3},
    ],
)
def test_ds_i_equals_the_batched_path(images, tmp_path, encoded, options):
    list_file, kind = images
    out = tmp_path / f"ds_{encoded}"
    convert(
        ConvertSpec(
            list_file=list_file,
            output=out,
            workers=1,
            image=ImageOptions(encoded=encoded, gray=kind == "png-gray"),
        )
    )
    alone = open_dataset(out, **options)
    batched = open_dataset(out, **options)  # its own generator: the same random draws in the same order
    for i in range(len(alone)):
        same(alone[i], batched.__getitems__([i])[0])
    if "seed" not in options:  # without random draws, one batch of all of them agrees too
        for i, pair in enumerate(batched.__getitems__(list(range(len(batched))))):
            same(alone[i], pair)
    image = alone[-1][0]
    assert image.shape[0] == (1 if kind == "png-gray" else 3)
    if image.is_floating_point():
        assert image.is_contiguous()


def test_ds_i_owns_its_memory(images, tmp_path):
    list_file, _ = images
    convert(ConvertSpec(list_file=list_file, output=tmp_path / "raw", workers=1))
    ds = open_dataset(tmp_path / "raw", output="uint8")
    first = ds[0][0]
    kept = first.clone()
    first += 1  # writable, and writing to it changes nothing the reader holds
    for i in range(len(ds)):
        ds[i]
    assert torch.equal(ds[0][0], kept)


@pytest.mark.parametrize("how", ["exif", "raw profile", "xmp"])
def test_a_png_carrying_an_orientation_is_still_rotated(tmp_path, how):
    # The PNG fast path skips reading an orientation only when no chunk can carry one.
    from PIL import Image, PngImagePlugin

    from mtldata.storage.image import decode_bytes

    path = write_image(tmp_path / "r.png", size=(30, 20))
    with Image.open(path) as im:
        if how == "exif":
            exif = im.getexif()
            exif[0x0112] = 6
            im.save(path, exif=exif)
        else:
            info = PngImagePlugin.PngInfo()
            if how == "raw profile":
                exif = Image.Exif()
                exif[0x0112] = 6
                payload = exif.tobytes().hex()
                info.add_text("Raw profile type exif", f"\nexif\n{len(payload) // 2}\n{payload}")
            else:
                info.add_itxt(
                    "XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
                )
            im.save(path, pnginfo=info)
    assert decode_bytes(path.read_bytes()).shape == (30, 20, 3)  # turned: 20 wide, 30 high
