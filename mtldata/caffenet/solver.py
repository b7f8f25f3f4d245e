"""Caffe's solver: learning-rate policies and the Step/Solve/Test/Snapshot loop.

The update rules themselves (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) are in updates.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffenet.net import CaffeNet, caffemodel_proto, load_caffemodel
from mtldata.caffenet.snapshots import SnapshotLedger
from mtldata.caffenet.updates import CaffeUpdate, SolverError

__all__ = [
    "LR_POLICIES",
    "IterationRecord",
    "LearningRate",
    "Solver",
    "SolverError",
    "format_number",
    "learning_rate",
]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

Batch = Mapping[str, Tensor]
LogFn = Callable[[str], None]


def format_number(x: float) -> str:
    """A number as Caffe's glog lines print it (C++ ostream default: 6 significant digits)."""
    return f"{float(x):.6g}"


def learning_rate(param: caffe_pb2.SolverParameter, it: int, current_step: int = 0) -> tuple[float, int]:
    """The rate SGDSolver::GetLearningRate gives at iteration `it`, and the new multistep position.

    `current_step` is the solver's state for "multistep", which moves at most one stepvalue per
    call, as in Caffe; the other policies are pure functions of `it`. The result is float32-rounded.
    """
    policy, base, gamma, power = param.lr_policy, param.base_lr, param.gamma, param.power
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and gamma < 0:
        raise SolverError(f"lr_policy {policy!r} needs gamma >= 0, got {gamma}")
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise SolverError(f"lr_policy 'step' needs stepsize > 0, got {param.stepsize}")
        current_step = it // param.stepsize
        rate = base * gamma**current_step
    elif policy == "exp":
        rate = base * gamma**it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-power)
    elif policy == "multistep":
        steps = param.stepvalue
        if current_step < len(steps) and it >= steps[current_step]:
            current_step += 1
        rate = base * gamma**current_step
    elif policy == "poly":
        if param.max_iter <= 0:
            raise SolverError("lr_policy 'poly' needs max_iter > 0")
        rate = base * (1.0 - it / param.max_iter) ** power
    elif policy == "sigmoid":
        if param.stepsize <= 0:
            raise SolverError(f"lr_policy 'sigmoid' needs stepsize > 0, got {param.stepsize}")
        rate = base * (1.0 / (1.0 + math.exp(-gamma * (it - param.stepsize))))
    else:
        raise SolverError(f"unknown learning rate policy {policy!r}; Caffe's are {', '.join(LR_POLICIES)}")
    return float(np.float32(rate)), current_step


class LearningRate:
    """The learning-rate schedule of a solver, holding multistep's position as Caffe does."""

    def __init__(self, param: caffe_pb2.SolverParameter, current_step: int = 0) -> None:
        self.param = param
        self.current_step = current_step
        learning_rate(param, 0, current_step)  # validates the policy and its fields now

    def __call__(self, it: int) -> float:
        rate, self.current_step = learning_rate(self.param, it, self.current_step)
        return rate


@dataclass
class IterationRecord:
    """What one training iteration computed: the weighted loss, each output, and the rate applied."""

    iter: int
    loss: float  # Σ loss_weight·loss of this iteration (averaged over iter_size)
    smoothed_loss: float  # the `loss = ` Caffe displays (average_loss)
    outputs: dict[str, np.ndarray]  # the net's output blobs (unweighted) of the last forward
    lr: float


@dataclass
class TestRecord:
    iter: int
    net: int
    scores: dict[str, np.ndarray]
    loss: float | None = None


@dataclass
class Solver:
    """Caffe's Solver loop over a train net (and test nets) fed by batch iterators.

    `train_batches` (and each of `test_batches`) yields dicts of input blobs, one per forward.
    Lines Caffe would log go to `log`; the library itself never prints.
    """

    param: caffe_pb2.SolverParameter
    net: CaffeNet
    train_batches: Iterator[Batch]
    test_nets: list[CaffeNet] = field(default_factory=list)
    test_batches: list[Iterator[Batch]] = field(default_factory=list)
    snapshot_prefix: str = ""
    log: LogFn | None = None
    before_iteration: Callable[[int], None] | None = None  # e.g. a ThreadChooser

    def __post_init__(self) -> None:
        if len(self.test_nets) != len(self.test_batches):
            raise SolverError("give one batch iterator per test net")
        if self.test_nets and len(self.param.test_iter) < len(self.test_nets):
            raise SolverError("test_iter must be specified for each test network")
        if self.test_nets and self.param.test_interval <= 0:
            raise SolverError("test nets need test_interval > 0")
        if self.param.average_loss < 1:
            raise SolverError("average_loss must be >= 1")
        self.updater = CaffeUpdate(self.net.learnable_params(), self.param)
        self.schedule = LearningRate(self.param)
        for test_net in self.test_nets:
            test_net.share_weights_from(self.net)
        self.iter = 0
        self.records: list[IterationRecord] = []
        self.tests: list[TestRecord] = []
        self.snapshots: list[Path] = []
        self._losses: list[np.float32] = []
        self._smoothed = np.float32(0)
        self.final_outputs: dict[str, np.ndarray] | None = None  # the display forward after solve()
        self.final_loss: float | None = None

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def _update_smoothed(self, loss: np.float32, start_iter: int) -> None:
        # Solver::UpdateSmoothedLoss, in float32 like Caffe's Dtype.
        average = self.param.average_loss
        if len(self._losses) < average:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed = np.float32((self._smoothed * np.float32(size - 1) + loss) / np.float32(size))
        else:
            idx = (self.iter - start_iter) % average
            self._smoothed = np.float32(self._smoothed + (loss - self._losses[idx]) / np.float32(average))
            self._losses[idx] = loss

    def _outputs(self, net: CaffeNet, blobs: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        return {name: blobs[name].detach().cpu().numpy().astype(np.float32) for name in net.output_blobs}

    def _log_outputs(self, kind: str, net: CaffeNet, outputs: Mapping[str, np.ndarray]) -> None:
        index = 0
        for name in net.output_blobs:
            weight = np.float32(net.blob_loss_weights.get(name, 0.0))
            for value in np.asarray(outputs[name], dtype=np.float32).ravel():
                extra = (
                    f" (* {format_number(weight)} = {format_number(weight * value)} loss)" if weight else ""
                )
                self._log(f"    {kind} net output #{index}: {name} = {format_number(value)}{extra}")
                index += 1

    def step(self, iters: int = 1) -> list[IterationRecord]:
        """Run `iters` training iterations (Solver::Step): forward/backward, display, update, snapshot."""
        p = self.param
        start_iter, stop = self.iter, self.iter + iters
        self._losses, self._smoothed = [], np.float32(0)
        done = []
        while self.iter < stop:
            if self.before_iteration is not None:
                self.before_iteration(self.iter)
            self.updater.zero_grad()
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
            ):
                self.test_all()
            display = bool(p.display) and self.iter % p.display == 0
            loss = np.float32(0)
            blobs: dict[str, Tensor] = {}
            for _ in range(p.iter_size):
                total, blobs = self.net.forward_loss(next(self.train_batches))
                if total.requires_grad:  # a net without weighted losses has nothing to learn from
                    total.backward()
                loss = np.float32(loss + np.float32(total.item()))
            loss = np.float32(loss / np.float32(p.iter_size))
            self._update_smoothed(loss, start_iter)
            outputs = self._outputs(self.net, blobs)
            if display:
                self._log(f"Iteration {self.iter}, loss = {format_number(self._smoothed)}")
                self._log_outputs("Train", self.net, outputs)
            step_before = self.schedule.current_step
            rate = self.schedule(self.iter)
            if p.lr_policy == "multistep" and self.schedule.current_step != step_before:
                self._log(f"MultiStep Status: Iteration {self.iter}, step = {self.schedule.current_step}")
            if display:
                self._log(f"Iteration {self.iter}, lr = {format_number(rate)}")
            self.updater.apply_update(rate, self.iter)
            if self.updater.last_clip is not None:
                norm, factor = self.updater.last_clip
                self._log(
                    f"Gradient clipping: scaling down gradients (L2 norm {format_number(norm)} > "
                    f"{format_number(p.clip_gradients)}) by scale factor {format_number(factor)}"
                )
            record = IterationRecord(self.iter, float(loss), float(self._smoothed), outputs, rate)
            self.records.append(record)
            done.append(record)
            self.iter += 1
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()
        return done

    def solve(self) -> list[IterationRecord]:
        """Train to max_iter (Solver::Solve): the final snapshot, display forward and test included."""
        p = self.param
        start_iter = self.iter
        self.check_snapshot_targets()
        done = self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                total, blobs = self.net.forward_loss(next(self.train_batches))
            self._update_smoothed(np.float32(total.item()), start_iter)
            self.final_outputs = self._outputs(self.net, blobs)
            self.final_loss = float(total.item())
            self._log(f"Iteration {self.iter}, loss = {format_number(self._smoothed)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._log("Optimization Done.")
        return done

    def test_all(self) -> list[TestRecord]:
        return [self.test(i) for i in range(len(self.test_nets))]

    @torch.no_grad()
    def test(self, index: int = 0) -> TestRecord:
        """Average each output of test net `index` over test_iter batches (Solver::Test)."""
        p, net = self.param, self.test_nets[index]
        self._log(f"Iteration {self.iter}, Testing net (#{index})")
        sums: dict[str, np.ndarray] = {}
        loss = np.float32(0)
        iters = p.test_iter[index]
        for _ in range(iters):
            total, blobs = net.forward_loss(next(self.test_batches[index]))
            if p.test_compute_loss:
                loss = np.float32(loss + np.float32(total.item()))
            for name, value in self._outputs(net, blobs).items():
                sums[name] = value if name not in sums else (sums[name] + value).astype(np.float32)
        means = {name: (value / np.float32(iters)).astype(np.float32) for name, value in sums.items()}
        record = TestRecord(self.iter, index, means)
        if p.test_compute_loss:
            record.loss = float(loss / np.float32(iters))
            self._log(f"Test loss: {format_number(record.loss)}")
        self._log_outputs("Test", net, means)
        self.tests.append(record)
        return record

    def snapshot_filename(self, extension: str) -> str:
        return f"{self.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot_iterations(self) -> list[int]:
        """The iterations `solve()` will snapshot at from here: every `snapshot`, then the last."""
        p = self.param
        final = max(self.iter, p.max_iter)
        every = p.snapshot
        iterations = list(range((self.iter // every + 1) * every, final + 1, every)) if every else []
        if p.snapshot_after_train and (not every or final % every != 0):
            iterations.append(final)
        return iterations

    def check_snapshot_targets(self) -> None:
        """Refuse, before any step, when a snapshot file `solve()` would write exists and is not
        mtldata's own (its ledger, snapshots.py, does not account for it)."""
        prefix = Path(self.snapshot_prefix)
        folder = prefix.parent
        if not folder.is_dir():
            return
        ahead = set(self.snapshot_iterations())
        head = f"{prefix.name}_iter_"
        existing = []
        for entry in folder.iterdir():
            name = entry.name
            for extension in (".caffemodel", ".solverstate"):
                number = name[len(head) : -len(extension)] if name.endswith(extension) else ""
                if name.startswith(head) and number.isdigit() and int(number) in ahead:
                    existing.append(entry)
        if existing:
            SnapshotLedger(folder).check_writable(sorted(existing))

    def snapshot(self) -> Path:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate, as Caffe's binary snapshots.

        Only over files of those names that mtldata wrote itself (snapshots.py keeps the account).
        """
        if self.param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
            raise SolverError("snapshot_format HDF5 is not implemented; use BINARYPROTO")
        model = self.snapshot_filename(".caffemodel")
        state_path = self.snapshot_filename(".solverstate")
        ledger = SnapshotLedger(Path(model).parent)
        ledger.check_writable([Path(model), Path(state_path)])
        self._log(f"Snapshotting to binary proto file {model}")
        weights = caffemodel_proto(self.net, self.param.snapshot_diff).SerializeToString()
        ledger.write(Path(model), weights)
        self._log(f"Snapshotting solver state to binary proto file {state_path}")
        state = self.updater.state_proto(self.iter, self.schedule.current_step, model)
        ledger.write(Path(state_path), state.SerializeToString())
        self.snapshots.append(Path(model))
        return Path(model)

    def restore(self, state_path: str | Path) -> None:
        """Continue from a .solverstate: its iteration, multistep position, history and weights."""
        state = caffe_pb2.SolverState()
        state.ParseFromString(Path(state_path).read_bytes())
        self.iter = state.iter
        self.schedule.current_step = state.current_step
        self.updater.load_history(state)
        if state.learned_net:
            learned = Path(state.learned_net)
            if not learned.is_absolute() and not learned.exists():
                learned = Path(state_path).parent / learned.name
            load_caffemodel(self.net, learned)
