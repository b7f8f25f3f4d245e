"""Caffe's solver: learning-rate policies, the SGD update, and the Step/Solve/Test/Snapshot loop.

The update is SGDSolver::ApplyUpdate's, in its order and in float32:

    clip the whole gradient to clip_gradients (L2 norm), divide it by iter_size,
    g ← ∇ + weight_decay·decay_mult·W            (L1: sign(W) instead of W)
    V ← momentum·V + lr·lr_mult·g
    W ← W − V

This is not torch.optim.SGD (V ← m·V + g; W ← W − lr·V): the two agree only while lr is constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import array_to_blob, blob_to_array
from mtldata.caffenet.layers import CaffeNetError
from mtldata.caffenet.net import CaffeNet, LearnableParam, load_caffemodel, save_caffemodel
from mtldata.durable import write_bytes_atomic

__all__ = [
    "LR_POLICIES",
    "CaffeSGD",
    "IterationRecord",
    "LearningRate",
    "Solver",
    "SolverError",
    "format_number",
    "learning_rate",
]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov")

Batch = Mapping[str, Tensor]
LogFn = Callable[[str], None]


class SolverError(CaffeNetError):
    """A solver prototxt Caffe would reject, or one asking for what mtldata does not implement."""


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


def solver_type(param: caffe_pb2.SolverParameter) -> str:
    """The solver type, from `type` or the deprecated `solver_type` enum."""
    if param.HasField("type"):
        kind = param.type
    elif param.HasField("solver_type"):
        kind = {"SGD": "SGD", "NESTEROV": "Nesterov"}.get(
            caffe_pb2.SolverParameter.SolverType.Name(param.solver_type), param.solver_type
        )
    else:
        kind = "SGD"
    if kind not in SOLVER_TYPES:
        raise SolverError(f"solver type {kind!r} is not implemented; mtldata has {', '.join(SOLVER_TYPES)}")
    return str(kind)


class CaffeSGD:
    """SGDSolver's (or NesterovSolver's) update over a net's learnable params, with its history V."""

    def __init__(self, params: Sequence[LearnableParam], param: caffe_pb2.SolverParameter) -> None:
        self.params = list(params)
        self.kind = solver_type(param)
        self.momentum = np.float32(param.momentum)
        self.weight_decay = np.float32(param.weight_decay)
        self.regularization = param.regularization_type
        if self.regularization not in ("L1", "L2"):
            raise SolverError(f"unknown regularization_type {self.regularization!r} (L1 or L2)")
        self.clip = param.clip_gradients
        if param.iter_size < 1:
            raise SolverError(f"iter_size must be >= 1, got {param.iter_size}")
        self.iter_size = param.iter_size
        self.history = [torch.zeros_like(p.tensor, dtype=torch.float32) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.tensor.grad = None

    @torch.no_grad()
    def apply_update(self, rate: float) -> None:
        """One update with learning rate `rate`, from the gradients accumulated in `.grad`."""
        grads = [
            p.tensor.grad if p.tensor.grad is not None else torch.zeros_like(p.tensor) for p in self.params
        ]
        if self.clip >= 0:
            norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
            if norm > self.clip:
                factor = np.float32(self.clip / norm)
                grads = [g * float(factor) for g in grads]
        if self.iter_size > 1:
            grads = [g * float(np.float32(1.0) / np.float32(self.iter_size)) for g in grads]
        for p, g, v in zip(self.params, grads, self.history, strict=True):
            local_rate = float(np.float32(rate) * np.float32(p.lr_mult))
            local_decay = float(self.weight_decay * np.float32(p.decay_mult))
            w = p.tensor
            if local_decay:
                g = g + local_decay * (w if self.regularization == "L2" else torch.sign(w))
            if self.kind == "Nesterov":
                previous = v.clone()
                v.mul_(float(self.momentum)).add_(g, alpha=local_rate)
                step = (1 + float(self.momentum)) * v - float(self.momentum) * previous
            else:
                v.mul_(float(self.momentum)).add_(g, alpha=local_rate)
                step = v
            w.sub_(step)

    def state_proto(self, it: int, current_step: int, learned_net: str) -> caffe_pb2.SolverState:
        state = caffe_pb2.SolverState()
        state.iter = it
        state.learned_net = learned_net
        state.current_step = current_step
        for v in self.history:
            state.history.append(array_to_blob(v.numpy()))
        return state

    def load_history(self, state: caffe_pb2.SolverState) -> None:
        if len(state.history) != len(self.history):
            raise SolverError(
                f"the solver state holds {len(state.history)} history blobs, the net has {len(self.history)} params"
            )
        for v, blob in zip(self.history, state.history, strict=True):
            values = torch.from_numpy(np.ascontiguousarray(blob_to_array(blob)))
            if values.numel() != v.numel():
                raise SolverError("a history blob of the solver state does not match its parameter's size")
            v.copy_(values.reshape(v.shape))


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

    def __post_init__(self) -> None:
        if len(self.test_nets) != len(self.test_batches):
            raise SolverError("give one batch iterator per test net")
        if self.test_nets and len(self.param.test_iter) < len(self.test_nets):
            raise SolverError("test_iter must be specified for each test network")
        if self.test_nets and self.param.test_interval <= 0:
            raise SolverError("test nets need test_interval > 0")
        if self.param.average_loss < 1:
            raise SolverError("average_loss must be >= 1")
        self.sgd = CaffeSGD(self.net.learnable_params(), self.param)
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
            self.sgd.zero_grad()
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
            rate = self.schedule(self.iter)
            if display:
                self._log(f"Iteration {self.iter}, lr = {format_number(rate)}")
            self.sgd.apply_update(rate)
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

    def snapshot(self) -> Path:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate, as Caffe's binary snapshots."""
        if self.param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
            raise SolverError("snapshot_format HDF5 is not implemented; use BINARYPROTO")
        model = self.snapshot_filename(".caffemodel")
        self._log(f"Snapshotting to binary proto file {model}")
        save_caffemodel(self.net, model, write_diff=self.param.snapshot_diff)
        state_path = self.snapshot_filename(".solverstate")
        self._log(f"Snapshotting solver state to binary proto file {state_path}")
        state = self.sgd.state_proto(self.iter, self.schedule.current_step, model)
        write_bytes_atomic(state_path, state.SerializeToString())
        self.snapshots.append(Path(model))
        return Path(model)

    def restore(self, state_path: str | Path) -> None:
        """Continue from a .solverstate: its iteration, multistep position, history and weights."""
        state = caffe_pb2.SolverState()
        state.ParseFromString(Path(state_path).read_bytes())
        self.iter = state.iter
        self.schedule.current_step = state.current_step
        self.sgd.load_history(state)
        if state.learned_net:
            learned = Path(state.learned_net)
            if not learned.is_absolute() and not learned.exists():
                learned = Path(state_path).parent / learned.name
            load_caffemodel(self.net, learned)
