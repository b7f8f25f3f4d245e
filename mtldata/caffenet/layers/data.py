"""Caffe's data layers: their tops come from outside the net, so the net does not run them; the
runner feeds each one from its source, as Caffe's do:

* `Data` (LMDB): records in key order, read continuously and wrapping around (batch i holds samples
  (batch_size·i + j) mod N), each layer with its own cursor, so an image LMDB and a label LMDB with
  the same keys stay aligned. An image Datum gives `(uint8 − mean) · scale` (transform_param, via
  mtldata.loader.transforms) and its int label as the optional second top; a float Datum (the label DB of
  the multi-label layout) gives its float_data as a (C, H, W) blob. A `source` may also name an
  mtldata dataset directory: its images, then its label vectors, as the two tops.
* `HDF5Data`: the `source` text file lists .h5 files; each top reads the dataset of its name, rows
  in order, continuing into the next file and wrapping around (shuffled only with `shuffle: true`).
* `ImageData`: a list file of `name label` lines read as Caffe reads it (the label is the int after
  the last space), images from `root_folder + name`, optionally resized to new_height x new_width
  (OpenCV INTER_LINEAR arithmetic), gray with `is_color: false`, in list order unless `shuffle`.
* `Input`: the caller gives the tops (`CaffeNet.forward`).

`DummyData` is the exception: it reads nothing, so it is an ordinary layer the net runs.

Caffe resolves `source`, the .h5 paths and `mean_file` against the working directory; mtldata tries
the working directory first and then the folder of the file that names the path.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffe.datum import parse_datum
from mtldata.caffenet.layers.base import Layer, register
from mtldata.caffenet.layers.fillers import fill
from mtldata.errors import DatasetFormatError

if TYPE_CHECKING:
    from mtldata.caffenet.net import CaffeNet

__all__ = ["DATA_LAYER_TYPES", "ImageListEntry", "NetFeeder", "read_image_list", "resolve_path"]

# Layers whose tops come from outside the net: the runner (or the caller) feeds them.
DATA_LAYER_TYPES = frozenset({"Data", "HDF5Data", "ImageData", "Input", "MemoryData", "WindowData"})


def resolve_path(path: str, bases: Sequence[Path], what: str) -> Path:
    """`path` as it exists relative to the first of `bases` that has it (absolute paths as they are)."""
    p = Path(path)
    if p.is_absolute():
        if p.exists():
            return p
        raise DatasetFormatError(f"{what}: {path} does not exist")
    tried = []
    for base in bases:
        candidate = base / p
        if candidate.exists():
            return candidate
        tried.append(str(candidate))
    raise DatasetFormatError(f"{what}: {path!r} not found (looked for {' and '.join(dict.fromkeys(tried))})")


def _first_datum(path: Path) -> caffe_pb2.Datum | None:
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True, max_readers=1)
    try:
        with env.begin() as txn:
            for _, value in txn.cursor():
                return parse_datum(value)
    finally:
        env.close()
    return None


def _float_transform(
    x: np.ndarray, tp: caffe_pb2.TransformationParameter, mean: np.ndarray | None
) -> np.ndarray:
    """DataTransformer on float Datums (float_data): `(x - mean) * scale`; crop and mirror unsupported."""
    if tp.crop_size or tp.mirror:
        raise DatasetFormatError("crop_size/mirror on float Datums (float_data) are not supported")
    out = x.astype(np.float32)
    if mean is not None:
        out = out - mean
    elif tp.mean_value:
        values = np.asarray(tp.mean_value, dtype=np.float32)
        if len(values) not in (1, x.shape[1]):
            raise DatasetFormatError(
                f"give 1 mean_value or one per channel ({x.shape[1]}), got {len(values)}"
            )
        out = out - (values if len(values) == 1 else values[None, :, None, None])
    return out * np.float32(tp.scale)


class _Source:
    """One opened LMDB source: its reader and what its records hold."""

    def __init__(self, source: Path) -> None:
        from mtldata.storage.backends import open_reader

        self.dataset_dir = not (source / "data.mdb").is_file()
        self.float_shape: tuple[int, int, int] | None = None
        if not self.dataset_dir:
            first = _first_datum(source)  # before open_reader: py-lmdb opens an env once per process
            if first is None:
                raise DatasetFormatError(f"{source} holds no records")
            # A Datum without pixels but with float_data is a blob of floats (a label DB).
            if len(first.float_data) and not first.data and not first.encoded:
                self.float_shape = (first.channels, first.height, first.width)
        self.reader = open_reader(source)


# LMDB environments may be opened only once per process (py-lmdb): the TRAIN and TEST feeds, and
# any other solver alive, share one reader per source for as long as one of them holds it.
_SOURCES: weakref.WeakValueDictionary[str, _Source] = weakref.WeakValueDictionary()


def _open_source(source: Path) -> _Source:
    key = str(source.resolve())
    shared = _SOURCES.get(key)
    if shared is None:
        shared = _Source(source)
        _SOURCES[key] = shared
    return shared


class _LmdbFeed:
    """A Data layer over one LMDB (or an mtldata dataset directory), with Caffe's wrapping cursor."""

    def __init__(
        self, layer: caffe_pb2.LayerParameter, source: Path, phase: str, bases: Sequence[Path]
    ) -> None:
        self.layer = layer
        self.tops = list(layer.top)
        if len(self.tops) > 2:
            raise DatasetFormatError(f"layer {layer.name!r}: a Data layer has at most 2 tops (data, label)")
        self.batch_size = layer.data_param.batch_size
        if self.batch_size <= 0:
            raise DatasetFormatError(f"layer {layer.name!r}: data_param.batch_size must be > 0")
        try:
            shared = _open_source(source)
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"layer {layer.name!r}: {exc}") from None
        self.shared = shared  # keeps the cached reader alive while this feed exists
        self.reader, self.float_shape, self.dataset_dir = (
            shared.reader,
            shared.float_shape,
            shared.dataset_dir,
        )
        self.count = len(self.reader)
        if self.count == 0:
            raise DatasetFormatError(f"layer {layer.name!r}: {source} holds no records")
        self.position = 0
        self.transform = None
        self.mean: np.ndarray | None = None
        tp = layer.transform_param
        if self.float_shape is None:
            from mtldata.loader.transforms import CaffeTransform, TransformSpec

            spec = TransformSpec.from_caffe(tp)
            if spec.mean_file is not None:
                spec = dataclasses.replace(
                    spec,
                    mean_file=str(resolve_path(spec.mean_file, bases, f"layer {layer.name!r} mean_file")),
                )
            self.transform = CaffeTransform(spec, phase)
        elif tp.HasField("mean_file"):
            from mtldata.caffe.blob import read_mean_file

            self.mean = read_mean_file(resolve_path(tp.mean_file, bases, f"layer {layer.name!r} mean_file"))
        self.skip = layer.data_param.rand_skip
        if self.skip:
            self.position = int(torch.randint(self.skip, ()).item())

    def _record(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.float_shape is not None:
            values = np.asarray(self.reader.labels(i), dtype=np.float32)
            return values.reshape(self.float_shape), np.zeros(1, np.float32)
        sample = self.reader.sample(i)
        image = sample.image
        if image.encoded:
            from mtldata.storage.image import decode_bytes, to_chw

            pixels = to_chw(decode_bytes(image.data, gray=self.layer.transform_param.force_gray))
        else:
            pixels = np.frombuffer(image.data, dtype=np.uint8).reshape(image.shape)
        return pixels, np.asarray(sample.labels, dtype=np.float32)

    def peek_shapes(self) -> dict[str, list[int]]:
        data, label = self._record(self.position % self.count)
        if self.transform is not None:
            shape = [self.batch_size, data.shape[0], *self.transform.output_size(*data.shape[1:])]
        else:
            shape = [self.batch_size, *data.shape]
        shapes = {self.tops[0]: shape}
        if len(self.tops) > 1:
            shapes[self.tops[1]] = self._label_shape(label)
        return shapes

    def _label_shape(self, label: np.ndarray) -> list[int]:
        # convert_imageset's int label is one value per item: top (N,); a dataset's K labels: (N, K, 1, 1)
        return [self.batch_size, label.size, 1, 1] if self.dataset_dir else [self.batch_size]

    def next_batch(self) -> dict[str, Tensor]:
        records = []
        for _ in range(self.batch_size):
            records.append(self._record(self.position))
            self.position = (self.position + 1) % self.count
        shapes = {r[0].shape for r in records}
        if len(shapes) > 1:
            raise DatasetFormatError(f"layer {self.layer.name!r}: a batch mixes item shapes {sorted(shapes)}")
        data = np.stack([r[0] for r in records])
        if self.transform is not None:
            top = self.transform.apply_batch(torch.from_numpy(np.ascontiguousarray(data)))
        else:
            top = torch.from_numpy(_float_transform(data, self.layer.transform_param, self.mean))
        out = {self.tops[0]: top}
        if len(self.tops) > 1:
            labels = np.stack([r[1] for r in records]).astype(np.float32)
            out[self.tops[1]] = torch.from_numpy(labels.reshape(self._label_shape(records[0][1])))
        return out


class _Hdf5Feed:
    """An HDF5Data layer: the datasets named after its tops, rows in order across the listed files."""

    def __init__(self, layer: caffe_pb2.LayerParameter, source: Path, bases: Sequence[Path]) -> None:
        self.layer = layer
        self.tops = list(layer.top)
        p = layer.hdf5_data_param
        if layer.HasField("transform_param") and layer.transform_param.ListFields():
            raise DatasetFormatError(
                f"layer {layer.name!r}: HDF5Data does not transform data (transform_param)"
            )
        self.batch_size = p.batch_size
        if self.batch_size <= 0:
            raise DatasetFormatError(f"layer {layer.name!r}: hdf5_data_param.batch_size must be > 0")
        names = source.read_text(encoding="utf-8").split()
        if not names:
            raise DatasetFormatError(f"layer {layer.name!r}: {source} lists no .h5 files")
        where = [*bases[:1], source.parent, *bases[1:]]
        self.files = [resolve_path(n, where, f"layer {layer.name!r} ({source})") for n in names]
        self.shuffle = p.shuffle
        self.order = list(range(len(self.files)))
        if self.shuffle:
            self.order = torch.randperm(len(self.files)).tolist()
        self.file_index = 0
        self._load(self.order[0])

    def _load(self, index: int) -> None:
        import h5py

        path = self.files[index]
        with h5py.File(path, "r") as f:
            arrays = {}
            for top in self.tops:
                if top not in f:
                    raise DatasetFormatError(
                        f"layer {self.layer.name!r}: {path} has no dataset {top!r} (a top's name)"
                    )
                arrays[top] = np.asarray(f[top][...], dtype=np.float32)
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1 or 0 in rows:
            raise DatasetFormatError(
                f"layer {self.layer.name!r}: {path}: the datasets must share a non-zero dim 0"
            )
        self.data = arrays
        self.rows = rows.pop()
        self.row = 0
        self.permutation = torch.randperm(self.rows).tolist() if self.shuffle else list(range(self.rows))

    def peek_shapes(self) -> dict[str, list[int]]:
        return {top: [self.batch_size, *a.shape[1:]] for top, a in self.data.items()}

    def next_batch(self) -> dict[str, Tensor]:
        picked: dict[str, list[np.ndarray]] = {top: [] for top in self.tops}
        for _ in range(self.batch_size):
            for top in self.tops:
                picked[top].append(self.data[top][self.permutation[self.row]])
            self.row += 1
            if self.row == self.rows:  # HDF5DataLayer::Next: the next file, or wrap to the first
                if len(self.files) > 1:
                    self.file_index += 1
                    if self.file_index == len(self.files):
                        self.file_index = 0
                        if self.shuffle:
                            self.order = torch.randperm(len(self.files)).tolist()
                    self._load(self.order[self.file_index])
                else:
                    self.row = 0
                    if self.shuffle:
                        self.permutation = torch.randperm(self.rows).tolist()
        out = {}
        for top, rows in picked.items():
            shapes = {r.shape for r in rows}
            if len(shapes) > 1:
                raise DatasetFormatError(f"layer {self.layer.name!r}: files disagree on the shape of {top!r}")
            out[top] = torch.from_numpy(np.stack(rows))
        return out


class DummyData(Layer):
    """Tops of given shapes from fillers (constant 0 without one), run inside the net: constant
    fillers are drawn once, the others again at every forward, as Caffe's DummyData does."""

    type_name = "DummyData"
    min_bottoms = 0
    max_bottoms = 0
    max_tops = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p, n = param.dummy_data_param, len(param.top)
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"give 0, 1 or {n} data_filler (one per top)")
        if p.num:
            legacy = [p.num, p.channels, p.height, p.width]
            if p.shape or any(len(v) not in (1, n) for v in legacy):
                raise self.error(f"give shape, or num/channels/height/width once or once per top ({n})")
            self.shapes = [[int(v[0 if len(v) == 1 else i]) for v in legacy] for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"give one shape, or one per top ({n})")
            self.shapes = [[int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim] for i in range(n)]
        zero = caffe_pb2.FillerParameter(type="constant", value=0.0)
        given = list(p.data_filler) or [zero]
        self.fillers = [given[0 if len(given) == 1 else i] for i in range(n)]
        self.fixed: list[Tensor | None] = [None] * n

    def forward(self):
        tops = []
        for i, (filler, shape) in enumerate(zip(self.fillers, self.shapes, strict=True)):
            if filler.type != "constant":
                tops.append(fill(filler, shape))
                continue
            if self.fixed[i] is None:
                self.fixed[i] = fill(filler, shape)
            tops.append(self.fixed[i])
        return tops


LAYERS = register(DummyData)


@dataclass(frozen=True)
class ImageListEntry:
    """One line of an ImageData list: the image name (root_folder not yet prepended) and its label."""

    name: str
    label: int
    line: int


_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _atoi(text: str) -> int:
    """C's atoi: leading blanks, a sign and digits; anything else ends the number (no digits: 0)."""
    match = _ATOI.match(text)
    return int(match.group(1)) if match else 0


def read_image_list(path: Path) -> list[ImageListEntry]:
    """An ImageData `source` read as Caffe reads it: per line, the label is atoi of what follows the
    last space and the name is everything before it (spaces inside names work, tabs do not split).

    Caffe has no comments and no blank lines: a blank line would name the image "", so it is an error
    here (Caffe fails when it reaches it); an empty list is an error too.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read the image list: {exc.strerror or exc}") from None
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()  # std::getline yields no line after the final newline
    entries = []
    for number, row in enumerate(rows, 1):
        if row.strip() == "":
            raise DatasetFormatError(f"{path}:{number}: a blank line names no image")
        cut = row.rfind(" ")
        name, label = (row, _atoi(row)) if cut < 0 else (row[:cut], _atoi(row[cut + 1 :]))
        entries.append(ImageListEntry(name, label, number))
    if not entries:
        raise DatasetFormatError(f"{path}: the image list is empty")
    return entries


class _ImageDataFeed:
    """An ImageData layer: images named by a list file (root_folder + name), decoded as OpenCV's imread,
    resized with INTER_LINEAR when new_height and new_width are both set, transformed like Data's;
    the int label after the last space as the second top. List order, wrapping around; shuffled
    (torch's RNG, not Caffe's) only with `shuffle: true`."""

    def __init__(
        self, layer: caffe_pb2.LayerParameter, source: Path, phase: str, bases: Sequence[Path]
    ) -> None:
        from mtldata.loader.transforms import CaffeTransform, TransformSpec

        p = layer.image_data_param
        self.layer, self.source, self.param = layer, source, p
        self.tops = list(layer.top)
        if len(self.tops) != 2:
            raise DatasetFormatError(f"layer {layer.name!r}: an ImageData layer has 2 tops (data, label)")
        if p.batch_size <= 0:
            raise DatasetFormatError(f"layer {layer.name!r}: image_data_param.batch_size must be > 0")
        if (p.new_height > 0) != (p.new_width > 0):
            raise DatasetFormatError(f"layer {layer.name!r}: give both new_height and new_width, or neither")
        self.where = [*bases[:1], source.parent, *bases[1:]]
        self.entries = read_image_list(source)
        self.order = list(range(len(self.entries)))
        if p.shuffle:
            self.order = torch.randperm(len(self.entries)).tolist()
        self.position = 0
        if p.rand_skip:
            self.position = int(torch.randint(p.rand_skip, ()).item())
            if self.position >= len(self.entries):
                raise DatasetFormatError(
                    f"layer {layer.name!r}: rand_skip {p.rand_skip} may skip past the {len(self.entries)} images"
                )
        spec = TransformSpec.from_caffe(layer.transform_param)
        if spec.mean_file is not None:
            spec = dataclasses.replace(
                spec, mean_file=str(resolve_path(spec.mean_file, bases, f"layer {layer.name!r} mean_file"))
            )
        self.transform = CaffeTransform(spec, phase)

    def _image(self, entry: ImageListEntry) -> np.ndarray:
        from mtldata.storage.image import ImageDecodeError, caffe_resize, load_image, to_chw

        where = f"{self.source}:{entry.line}"
        path = resolve_path(self.param.root_folder + entry.name, self.where, where)  # a string concatenation
        try:
            pixels = load_image(path, gray=not self.param.is_color)
        except ImageDecodeError as exc:
            raise DatasetFormatError(f"{where}: {path}: {exc}") from None
        if self.param.new_height > 0:
            pixels = caffe_resize(pixels, self.param.new_width, self.param.new_height)
        return to_chw(pixels)

    def peek_shapes(self) -> dict[str, list[int]]:
        c, h, w = self._image(self.entries[self.order[self.position]]).shape
        return {
            self.tops[0]: [self.param.batch_size, c, *self.transform.output_size(h, w)],
            self.tops[1]: [self.param.batch_size],
        }

    def next_batch(self) -> dict[str, Tensor]:
        images, labels = [], []
        for _ in range(self.param.batch_size):
            entry = self.entries[self.order[self.position]]
            image = self._image(entry)
            if images and image.shape != images[0].shape:
                raise DatasetFormatError(
                    f"{self.source}:{entry.line}: image of shape {image.shape} (C, H, W) in a batch of "
                    f"{images[0].shape}; without new_height/new_width the images of a batch need one size"
                )
            images.append(image)
            labels.append(entry.label)
            self.position += 1
            if self.position == len(self.entries):  # wrap around; reshuffle each epoch when shuffling
                self.position = 0
                if self.param.shuffle:
                    self.order = torch.randperm(len(self.entries)).tolist()
        data = self.transform.apply_batch(torch.from_numpy(np.stack(images)))
        return {self.tops[0]: data, self.tops[1]: torch.tensor(labels, dtype=torch.float32)}


class NetFeeder:
    """The batches of a net's data layers, one dict of input blobs per forward (an endless iterator)."""

    def __init__(self, net: CaffeNet, bases: Sequence[Path]) -> None:
        self.feeds: list[_LmdbFeed | _Hdf5Feed | _ImageDataFeed] = []
        for layer in net.data_layers:
            if layer.type == "Data":
                if layer.data_param.backend != caffe_pb2.DataParameter.LMDB:
                    raise DatasetFormatError(
                        f"layer {layer.name!r}: only backend: LMDB is supported (not LEVELDB)"
                    )
                source = resolve_path(
                    layer.data_param.source, bases, f"layer {layer.name!r} data_param.source"
                )
                self.feeds.append(_LmdbFeed(layer, source, net.phase, bases))
            elif layer.type == "HDF5Data":
                source = resolve_path(
                    layer.hdf5_data_param.source, bases, f"layer {layer.name!r} hdf5_data_param.source"
                )
                self.feeds.append(_Hdf5Feed(layer, source, bases))
            elif layer.type == "ImageData":
                source = resolve_path(
                    layer.image_data_param.source, bases, f"layer {layer.name!r} image_data_param.source"
                )
                self.feeds.append(_ImageDataFeed(layer, source, net.phase, bases))
            else:
                raise DatasetFormatError(
                    f"{net.where(layer)}layer {layer.name!r}: the runner feeds Data, HDF5Data and ImageData layers, "
                    f"not {layer.type}"
                )

    def peek_shapes(self) -> dict[str, list[int]]:
        shapes: dict[str, list[int]] = {}
        for feed in self.feeds:
            shapes.update(feed.peek_shapes())
        return shapes

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self

    def __next__(self) -> dict[str, Tensor]:
        batch: dict[str, Tensor] = {}
        for feed in self.feeds:
            batch.update(feed.next_batch())
        return batch
