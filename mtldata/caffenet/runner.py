"""Run a Caffe solver prototxt on converted data: the nets, their data layers, the solver.

The data layers are fed as Caffe's are (see `mtldata.caffenet.layers.data`). Paths: Caffe resolves
`net`, `source`, the .h5 paths and `mean_file` against the working directory. mtldata tries the
working directory first and then the folder of the file that names the path (the solver, the net
prototxt, the HDF5 list), so a setup also runs from elsewhere; an error names both places.
Snapshots go to `snapshot_prefix` under the work directory (default: the solver file's name without
extension, as Caffe does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import read_net, read_solver
from mtldata.caffenet.layers.base import CaffeNetError
from mtldata.caffenet.layers.data import NetFeeder, resolve_path
from mtldata.caffenet.net import CaffeNet, WeightsReport, load_caffemodel
from mtldata.caffenet.solver import Solver, SolverError
from mtldata.caffenet.threads import ThreadChooser
from mtldata.errors import CaffeFileError, DatasetFormatError

__all__ = ["NetFeeder", "load_solver", "resolve_path", "train_from_solver"]

LogFn = Callable[[str], None]


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


@contextlib.contextmanager
def _in_file(path: Path, kinds: tuple[type[Exception], ...], unless: str = "") -> Iterator[None]:
    """An error of `kinds` (exactly) raised inside names the file it is about: `path: ...` in front,
    unless it names one already (a message starting with `unless`, or with `path`)."""
    try:
        yield
    except kinds as exc:
        text = str(exc)
        if type(exc) not in kinds or text.startswith(f"{path}:") or (unless and not text.startswith(unless)):
            raise
        raise type(exc)(f"{path}: {text}") from None


def _build_net(
    param: caffe_pb2.NetParameter, state: caffe_pb2.NetState, bases: Sequence[Path], source: Path
) -> tuple[CaffeNet, NetFeeder]:
    phase = "train" if state.phase == caffe_pb2.TRAIN else "test"
    # A layer's error names the layer; the file it is in is put in front (the net's errors that
    # know it start with `file:line:` already).
    with _in_file(source, (CaffeNetError, DatasetFormatError), unless="layer "):
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
    with _in_file(solver_path, (SolverError,)):
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
    threads: int | None = None,
) -> Solver:
    """Run a whole Caffe setup (`caffe train --solver=... [--weights=...]`); returns the finished Solver.

    `threads` fixes torch's CPU thread count; None times the first iterations at 1 thread and at
    every available core and keeps the faster (see threads.py).
    """
    solver, reports = load_solver(solver_path, init=init, workdir=workdir, cwd=cwd, log=log)
    threads_before = torch.get_num_threads()
    solver.before_iteration = ThreadChooser(threads, log=log)
    if log is not None:
        for report in reports:
            log(f"Copied weights of layers {', '.join(report.copied) or '(none)'}")
            if report.ignored:
                log(f"Ignoring source layers {', '.join(report.ignored)}")
        log(f"Solving {solver.net.net_name}")
        log(f"Learning Rate Policy: {solver.param.lr_policy}")
    try:
        with _in_file(Path(solver_path), (SolverError,)):  # a learning rate policy, a snapshot format
            solver.solve()
    finally:
        torch.set_num_threads(threads_before)
    return solver
