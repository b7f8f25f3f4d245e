"""Run a Caffe solver prototxt on converted data: the Data/HDF5Data layers, the nets, the solver.

Data layers are fed as Caffe's are:

* `Data` (LMDB): records in key order, read continuously and wrapping around (batch i holds samples
  (batch_size·i + j) mod N), each layer with its own cursor, so an image LMDB and a label LMDB with
  the same keys stay aligned. An image Datum gives `(uint8 − mean) · scale` (transform_param, via
  mtldata.loader.transforms) and its int label as the optional second top; a float Datum (the label DB of
  the multi-label layout) gives its float_data as a (C, H, W) blob. A `source` may also name an
  mtldata dataset directory: its images, then its label vectors, as the two tops.
* `HDF5Data`: the `source` text file lists .h5 files; each top reads the dataset of its name, rows
  in order, continuing into the next file and wrapping around (shuffled only with `shuffle: true`).

Paths: Caffe resolves `net`, `source`, the .h5 paths and `mean_file` against the working directory.
mtldata tries the working directory first and then the folder of the file that names the path (the
solver, the net prototxt, the HDF5 list), so a setup also runs from elsewhere; an error names both
places. Snapshots go to `snapshot_prefix` under the work directory (default: the solver file's
name without extension, as Caffe does).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffe.datum import parse_datum
from mtldata.caffe.prototxt import read_net, read_solver
from mtldata.caffenet.net import CaffeNet, WeightsReport, load_caffemodel
from mtldata.caffenet.solver import Solver, SolverError
from mtldata.errors import CaffeFileError, DatasetFormatError

__all__ = ["NetFeeder", "load_solver", "resolve_path", "train_from_solver"]

LogFn = Callable[[str], None]


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


# --------------------------------------------------------------------------------------------
# Data layer feeds
# --------------------------------------------------------------------------------------------


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


class NetFeeder:
    """The batches of a net's data layers, one dict of input blobs per forward (an endless iterator)."""

    def __init__(self, net: CaffeNet, bases: Sequence[Path]) -> None:
        self.feeds: list[_LmdbFeed | _Hdf5Feed] = []
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
            else:
                raise DatasetFormatError(
                    f"{net.where(layer)}layer {layer.name!r}: the runner feeds Data and HDF5Data layers, not {layer.type}"
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


# --------------------------------------------------------------------------------------------
# Solver setup
# --------------------------------------------------------------------------------------------


def _state(phase: int, *states: caffe_pb2.NetState) -> caffe_pb2.NetState:
    """Solver's NetState precedence: the phase, then the net's own state, then the solver's."""
    out = caffe_pb2.NetState()
    out.phase = phase
    for state in states:
        out.MergeFrom(state)
    return out


def _build_net(
    param: caffe_pb2.NetParameter, state: caffe_pb2.NetState, bases: Sequence[Path], source: Path
) -> tuple[CaffeNet, NetFeeder]:
    phase = "train" if state.phase == caffe_pb2.TRAIN else "test"
    net = CaffeNet(param, phase, stages=list(state.stage), level=state.level, source=source)
    feeder = NetFeeder(net, bases)
    net.setup(feeder.peek_shapes())
    return net, feeder


def load_solver(
    solver_path: str | Path,
    *,
    init: str | Path | Sequence[str | Path] | None = None,
    workdir: str | Path | None = None,
    cwd: str | Path | None = None,
    log: LogFn | None = None,
) -> tuple[Solver, list[WeightsReport]]:
    """The Solver of a solver prototxt with its nets and data, ready to `solve()` or `step()`.

    `init` caffemodel(s) are copied into the train net after Caffe's fillers ran (as `caffe train
    --weights`), after any `weights` the solver lists. Relative paths resolve against `cwd`
    (default: the current directory) first, then the folder of the file naming them.
    """
    solver_path = Path(solver_path)
    cwd = Path.cwd() if cwd is None else Path(cwd)
    workdir = cwd if workdir is None else Path(workdir)
    if not solver_path.is_file():
        raise CaffeFileError(solver_path, "no such solver file")
    param = read_solver(solver_path)
    if param.random_seed >= 0:
        torch.manual_seed(param.random_seed)
    solver_bases = [cwd, solver_path.parent]

    sources = [f for f in ("net", "net_param", "train_net", "train_net_param") if param.HasField(f)]
    if len(sources) != 1:
        raise SolverError(
            f"{solver_path}: give exactly one of net, net_param, train_net, train_net_param (got {sources or 'none'})"
        )

    def net_file(name: str) -> tuple[caffe_pb2.NetParameter, list[Path], Path]:
        path = resolve_path(name, solver_bases, f"{solver_path}: net")
        return read_net(path), [cwd, path.parent], path

    if param.HasField("train_net_param") or param.HasField("net_param"):
        train_param = param.train_net_param if param.HasField("train_net_param") else param.net_param
        train_bases, train_source = solver_bases, solver_path
    else:
        train_param, train_bases, train_source = net_file(
            param.train_net if param.HasField("train_net") else param.net
        )
    train_state = _state(caffe_pb2.TRAIN, train_param.state, param.train_state)
    net, feeder = _build_net(train_param, train_state, train_bases, train_source)

    # Test nets: test_net_param, then test_net files, then the generic net for the remaining test_iter.
    test_params: list[tuple[caffe_pb2.NetParameter, list[Path], Path]] = [
        (p, solver_bases, solver_path) for p in param.test_net_param
    ]
    test_params += [net_file(name) for name in param.test_net]
    generic = param.HasField("net") or param.HasField("net_param")
    if generic:
        extra = len(param.test_iter) - len(test_params)
        test_params += [(train_param, train_bases, train_source)] * max(extra, 0)
    elif len(param.test_iter) != len(test_params):
        raise SolverError(f"{solver_path}: test_iter must be specified for each test network")
    if param.test_state and len(param.test_state) != len(test_params):
        raise SolverError(f"{solver_path}: test_state must be unspecified or given once per test net")
    test_nets, test_feeders = [], []
    for i, (test_param, bases, source) in enumerate(test_params):
        extra_state = param.test_state[i] if param.test_state else caffe_pb2.NetState()
        test_net, test_feeder = _build_net(
            test_param, _state(caffe_pb2.TEST, test_param.state, extra_state), bases, source
        )
        test_nets.append(test_net)
        test_feeders.append(test_feeder)

    reports = []
    weights = [w for entry in param.weights for w in entry.split(",") if w]
    inits = [init] if isinstance(init, (str, Path)) else list(init or [])
    for path in [*(resolve_path(w, solver_bases, "solver weights") for w in weights), *inits]:
        reports.append(load_caffemodel(net, resolve_path(str(path), [cwd], "initial weights")))

    prefix = Path(param.snapshot_prefix) if param.snapshot_prefix else Path(solver_path.stem)
    prefix = prefix if prefix.is_absolute() else workdir / prefix
    if prefix.is_dir():
        prefix = prefix / solver_path.stem
    if param.snapshot or param.snapshot_after_train:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    solver = Solver(
        param=param,
        net=net,
        train_batches=feeder,
        test_nets=test_nets,
        test_batches=test_feeders,
        snapshot_prefix=str(prefix),
        log=log,
    )
    return solver, reports


def train_from_solver(
    solver_path: str | Path,
    *,
    init: str | Path | Sequence[str | Path] | None = None,
    workdir: str | Path | None = None,
    cwd: str | Path | None = None,
    log: LogFn | None = None,
) -> Solver:
    """Run a whole Caffe setup (`caffe train --solver=... [--weights=...]`); returns the finished Solver."""
    solver, reports = load_solver(solver_path, init=init, workdir=workdir, cwd=cwd, log=log)
    if log is not None:
        for report in reports:
            log(f"Copied weights of layers {', '.join(report.copied) or '(none)'}")
            if report.ignored:
                log(f"Ignoring source layers {', '.join(report.ignored)}")
        log(f"Solving {solver.net.net_name}")
        log(f"Learning Rate Policy: {solver.param.lr_policy}")
    solver.solve()
    return solver
