"""The training loop, top to bottom: setup, then epochs of steps, validation and checkpoints.

Everything a run does is visible here in order: device and DDP setup, data, model, objective (losses
and task weights), optimizer and schedule, AMP, resume, the step with gradient accumulation, the
epoch's validation, metrics.jsonl and the atomic checkpoints. The library never prints: progress,
tables and messages go to the `Reporter` the caller passes (the CLI's draws a bar per epoch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mtldata.storage.output_guard import RUN_MARKER, claim_folder
from mtldata.tasks import TaskSet, dump_tasks
from mtldata.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mtldata.train.config import CONFIG_NAME, RUNTIME_FIELDS, ConfigError, TrainConfig
from mtldata.train.data import RunData, build_data, resolve_config, step_generator
from mtldata.train.finite import finite_losses
from mtldata.train.losses import MultiTaskObjective
from mtldata.train.metrics import TaskMetrics
from mtldata.train.models import MultiTaskNet, build_model, freeze
from mtldata.train.run_io import DESCRIPTION_KEY, model_description
from mtldata.train.weighting import Weighting, make_weighting

__all__ = ["Reporter", "TrainResult", "autocast", "amp_dtype", "pick_device", "train"]

METRICS_NAME = "metrics.jsonl"
# What a run writes into its out_dir; a folder holding any of them without RUN_MARKER is not a run's.
RUN_FILES = (CONFIG_NAME, "tasks.toml", METRICS_NAME, "last.pt", "best.pt")


class Reporter:
    """Receives what a run has to say; the default says nothing. Only rank 0's reporter is called."""

    def message(self, text: str) -> None:
        """A one-line note (resumed from, weights loaded, ...)."""

    def run_start(self, config: TrainConfig, tasks: TaskSet, steps_per_epoch: int) -> None:
        """The run's resolved configuration and tasks, before the first epoch."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """An epoch of `steps` optimizer steps begins (epochs count from 1 here)."""

    def step(self, step: int, logs: dict[str, Any] | None) -> None:
        """One optimizer step done; `logs` (losses, weights, lr) every `log_every` steps, else None."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """The epoch's record, as appended to metrics.jsonl."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: the model, the records, where the checkpoints are."""

    out_dir: Path
    model: MultiTaskNet
    objective: MultiTaskObjective
    tasks: TaskSet
    config: TrainConfig
    step: int
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_per_second: float = 0.0
    data_wait_share: float = 0.0
    rank: int = 0  # this process's DDP rank


# ---------------------------------------------------------------------------------------------------
# Device and precision


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto": CUDA when there is one, else CPU; "cuda" without CUDA is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device cuda: CUDA is not available (torch {torch.__version__}, "
            f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: on CUDA bf16 where supported, else fp16 (which needs a GradScaler); None off CUDA."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (`dtype` None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# Pieces the loop uses


def _optimizer(cfg: TrainConfig, model: MultiTaskNet, weighting: Weighting) -> torch.optim.Optimizer:
    """Param groups: trunk (lr * trunk_lr_mult), heads, and learned task weights (no weight decay)."""
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    groups = [
        {"params": trunk, "lr": cfg.lr * cfg.trunk_lr_mult, "name": "trunk"},
        {"params": list(model.heads.parameters()), "lr": cfg.lr, "name": "heads"},
    ]
    learned = list(weighting.parameters())
    if learned:
        groups.append(
            {"params": learned, "lr": cfg.weighting_lr or cfg.lr, "weight_decay": 0.0, "name": "weighting"}
        )
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The schedule as a multiplier of each group's lr, by optimizer step."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "step":
            return warm * cfg.lr_gamma ** ((step // steps_per_epoch) // cfg.lr_step_epochs)
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))

    return factor


def _load_init(model: MultiTaskNet, path: str, reporter: Reporter) -> None:
    """Copy the weights of `path` (a checkpoint or a state_dict) whose names and shapes match."""
    state = load_checkpoint(path)
    weights = state.get("model", state)
    own = model.state_dict()
    matched = {
        k: v
        for k, v in weights.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
    }
    if not any(k.startswith("trunk.") for k in matched):
        raise CheckpointError(f"{path}: no trunk weights fit this model (another trunk or width?)")
    model.load_state_dict(matched, strict=False)
    skipped = len(own) - len(matched)
    reporter.message(
        f"init: loaded {len(matched)} tensors from {path}"
        + (f", {skipped} left as initialised" if skipped else "")
    )


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, targets = batch
    nb = device.type == "cuda"  # pinned host memory: the copy overlaps with compute
    return images.to(device, non_blocking=nb), {k: v.to(device, non_blocking=nb) for k, v in targets.items()}


def _inputs(
    images: torch.Tensor, transform: Any, generator: torch.Generator | None, channels_last: bool
) -> torch.Tensor:
    """The network's input: uint8 batches go through Caffe's transform here, on their device."""
    x = transform.apply_batch(images, generator) if transform is not None else images.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    objective: MultiTaskObjective,
    data: RunData,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    seed: int,
) -> dict[str, dict[str, float | None]]:
    """Per-task loss and metrics over the validation data (summed across ranks)."""
    model.eval()
    metrics = TaskMetrics(objective.tasks, device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    for i, batch in enumerate(data.val_loader):
        images, targets = _to_device(batch, device)
        x = _inputs(images, data.val_transform, step_generator(seed, -1, rank, i), channels_last)
        with autocast(device, dtype):
            outputs = model(x)
        metrics.update(outputs, targets, objective.evaluate(outputs, targets))
    metrics.all_reduce()
    return metrics.compute()


def metrics_lines(record: dict[str, Any], tasks: TaskSet) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of an epoch record: one per split, flat, as `mtldata plot` reads them."""
    common = {"epoch": record["epoch"], "step": record["step"]}
    lines = [
        {
            **common,
            "split": "train",
            "loss": record["train"]["losses"],
            "total": record["train"]["total"],
            "weights": record["weights"],
            "lr": record["lr"],
            "seconds": record["seconds"],
            "data_wait_share": record["data_wait_share"],
            "best": record["best"],
        }
    ]
    if record.get("val"):
        val = record["val"]
        losses = {n: val[n]["loss"] for n in tasks.names}
        lines.append(
            {
                **common,
                "split": "val",
                "loss": losses,
                "total": sum(t.loss_weight * (losses[t.name] or 0.0) for t in tasks),
                "metrics": {
                    n: {k: v for k, v in val[n].items() if k not in ("loss", "labelled")} for n in tasks.names
                },
                "labelled": {n: val[n].get("labelled") for n in tasks.names},  # a count, not a curve
            }
        )
    return lines


def _average_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks, so that every rank validates and ends with
    the same model (DDP averages gradients, but each rank updates its statistics on its own batches)."""
    world = dist.get_world_size()
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)


LOWER_IS_BETTER = ("loss", "mean_error", "mae", "rmse")


def _score(record: dict[str, Any], tasks: TaskSet, metric: str = "loss") -> float:
    """Lower is better: the loss_weight-weighted validation loss (else the training one), or the
    validation metric `TASK/METRIC` (negated when higher is better)."""
    if metric != "loss":
        task, name = metric.split("/")
        if not record.get("val"):
            raise ConfigError(f"best_metric {metric}: needs validation data (--val or --val-split)")
        values = record["val"].get(task)
        if values is None or name not in values:
            known = [f"{t}/{m}" for t, ms in record["val"].items() for m in ms]
            raise ConfigError(
                f"best_metric {metric}: no such validation metric (there are {', '.join(known)})"
            )
        value = values[name]
        if value is None:
            return math.inf
        return value if name in LOWER_IS_BETTER or name.endswith("error") else -value
    if record.get("val"):
        parts = {t.name: record["val"][t.name]["loss"] for t in tasks}
    else:
        parts = record["train"]["losses"]
    return sum(t.loss_weight * (parts[t.name] or 0.0) for t in tasks)


# ---------------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train as `cfg` says. Under torchrun (WORLD_SIZE > 1) every process calls this and DDP is used.

    A caller that sets up the process group itself should import torch._dynamo before it does (see
    _import_dynamo_before_group), or the group outlives its destroy_process_group."""
    # -- processes: DDP when launched by torchrun (or when the caller set up the process group)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created_group = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        _import_dynamo_before_group()
        dist.init_process_group(backend)
        created_group = True
    try:
        return _train(cfg, reporter or Reporter())
    except BaseException as exc:
        if created_group:
            # The traceback keeps _train's frame, whose DDP model holds the group: without its
            # locals the group dies in _shut_down_group, as on a normal return. The message stays.
            traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        if created_group:
            _shut_down_group()


def _import_dynamo_before_group() -> None:
    """Import torch._dynamo while no process group exists, so that the group dies with
    destroy_process_group.

    DDP imports torch._dynamo when it is built. Imported while a group exists, it keeps references
    to that group that Python's GC cannot see (torch 2.13), so destroy_process_group cannot free it:
    gloo's threads and rank 0's store thread then run on into interpreter shutdown. That is the
    state in which a rank was seen to abort at exit ("terminate called without an active
    exception", SIGABRT, rarely). Imported first, it holds none, and the group's threads are
    joined inside _shut_down_group.
    """
    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401


def _shut_down_group() -> None:
    """Leave the process group together: no rank tears down its connections while another still
    uses them (a rank that exited early made its peer abort at exit, SIGABRT in about 1 run in 5)."""
    try:
        dist.barrier()
    except Exception:  # noqa: BLE001 - a peer that already failed: still release this rank's group
        pass
    finally:
        dist.destroy_process_group()


def _train(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    ddp = dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if ddp else 0
    world = dist.get_world_size() if ddp else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    master = rank == 0
    if not master:
        reporter = Reporter()
    device = pick_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)

    # -- configuration: a prototxt fills in data and tasks; a resumed run keeps its saved settings
    cfg, tasks = resolve_config(cfg)
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(out_dir / "last.pt")
        saved = TrainConfig.from_dict(checkpoint["config"], f"{out_dir / 'last.pt'} config")
        changed = cfg.differences(saved) + (
            ["tasks (their definition)"] if checkpoint["tasks"] != dump_tasks(tasks) else []
        )
        if changed:
            raise ConfigError(
                f"--resume: these settings differ from the run in {out_dir}: {', '.join(changed)} "
                "(a resumed run keeps its settings; start a new out_dir to change them)"
            )
        cfg = saved.replace(**{k: getattr(cfg, k) for k in RUNTIME_FIELDS})
    if checkpoint is None and (out_dir / "last.pt").exists():
        raise ConfigError(
            f"{out_dir} already holds a run (last.pt); continue it with --resume or choose another out_dir"
        )
    if master:
        if checkpoint is None:  # a new run: never over a user's own tasks.toml/config.toml/metrics
            claim_folder(out_dir, RUN_MARKER, RUN_FILES, "mtldata train")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_NAME).write_text(cfg.to_toml(), encoding="utf-8")
        (out_dir / "tasks.toml").write_text(dump_tasks(tasks), encoding="utf-8")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)

    # -- data: a seeded order per epoch, uint8 batches transformed on the device
    data = build_data(cfg, tasks, rank=rank, world=world, pin_memory=device.type == "cuda")
    batches_per_epoch = math.ceil(len(data.train_sampler) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs

    # -- model, objective (losses + task weights), optimizer, schedule, precision
    input_shape = tuple(int(d) for d in data.train[0][0].shape)
    if cfg.crop_size:
        input_shape = (input_shape[0], cfg.crop_size, cfg.crop_size)
    notes: list[str] = []
    model = build_model(cfg, tasks, input_shape, load_weights=checkpoint is None, notes=notes)
    for note in notes:
        reporter.message(note)
    if cfg.init and checkpoint is None and not cfg.init.endswith(".caffemodel"):
        _load_init(model, cfg.init, reporter)
    description = model_description(cfg, tasks, getattr(data.train.reader, "manifest", None), input_shape)
    trainable, frozen = freeze(model, trunk=cfg.freeze_trunk, until=cfg.freeze_until)
    reporter.message(f"parameters: {trainable:,} train, {frozen:,} frozen")
    channels_last = cfg.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    weighting = make_weighting(
        cfg.weighting, tasks, dwa_temperature=cfg.dwa_temperature, gradnorm_alpha=cfg.gradnorm_alpha
    )
    objective = MultiTaskObjective(tasks, weighting).to(device)
    optimizer = _optimizer(cfg, model, weighting)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps_per_epoch, total_steps))
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # -- resume: every piece of state, then the position in the data
    epoch, step, batch_in_epoch, best = 0, 0, 0, math.inf
    partial = None
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        epoch, step, batch_in_epoch = checkpoint["epoch"], checkpoint["step"], checkpoint["batch_in_epoch"]
        best, partial = checkpoint["best"], checkpoint["running"]
        reporter.message(f"resumed from {out_dir / 'last.pt'} at epoch {epoch + 1}, step {step}")
    weighting.broadcast()
    reporter.run_start(cfg, tasks, steps_per_epoch)

    # -- wrappers: DDP (gradients averaged across ranks), then torch.compile
    train_model: nn.Module = model
    ddp_model = None
    if ddp:
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_model = ddp_model
    if cfg.compile:
        train_model = torch.compile(train_model)
    shared = model.shared_parameter() if cfg.weighting == "gradnorm" else None

    writer = None
    if cfg.tensorboard and master:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard = true needs the tensorboard package (pip install tensorboard)"
            ) from None
        writer = SummaryWriter(str(out_dir / "tensorboard"))

    def checkpoint_state(
        next_epoch: int, next_batch: int, sums: torch.Tensor | None = None
    ) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(),
            "tasks": dump_tasks(tasks),
            "input_shape": list(input_shape),  # what build_model needs to rebuild the network
            "model": model.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": next_epoch,
            "step": step,
            "batch_in_epoch": next_batch,
            "running": sums,  # the epoch's loss sums so far, when stopped inside it
            "best": best,
            "rng": rng_state(),
            DESCRIPTION_KEY: description,  # what evaluate, predict and export need (run_io.py)
        }

    # -- epochs
    run_started, run_wait, run_steps = time.perf_counter(), 0.0, 0
    stopped = False
    try:
        while epoch < cfg.epochs and not stopped:
            data.train_sampler.set_epoch(epoch, start=batch_in_epoch * cfg.batch_size)
            model.train()  # batch norms of a frozen part stay in eval mode (MultiTaskNet.train)
            objective.train()
            reporter.epoch_start(epoch + 1, cfg.epochs, steps_per_epoch - batch_in_epoch // cfg.grad_accum)
            # the epoch's running sums: per-task losses, the weighted total, the number of batches
            running = torch.zeros(len(tasks) + 2, dtype=torch.float64, device=device)
            if partial is not None:  # resumed inside this epoch: the sums of the batches before
                running.copy_(partial)
                partial = None
            started, wait = time.perf_counter(), 0.0
            batch_index = batch_in_epoch
            loader = iter(data.train_loader)
            skipped = False  # whether the step being accumulated met a non-finite loss (--skip-nonfinite)
            while True:
                # one optimizer step = grad_accum micro-batches (fewer at the end of the epoch)
                group = min(cfg.grad_accum, batches_per_epoch - batch_index)
                if group <= 0:
                    break
                for micro in range(group):
                    t0 = time.perf_counter()
                    images, targets = _to_device(next(loader), device)
                    wait += time.perf_counter() - t0
                    gen = step_generator(cfg.seed, epoch, rank, batch_index)
                    x = _inputs(images, data.train_transform, gen, channels_last)
                    last_micro = micro == group - 1
                    sync = (
                        contextlib.nullcontext() if (ddp_model is None or last_micro) else ddp_model.no_sync()
                    )
                    with sync:
                        with autocast(device, dtype):
                            outputs = train_model(x)
                        scale = scaler.get_scale() if scaler.is_enabled() and shared is not None else 1.0
                        out = objective(outputs, targets, shared=shared, grad_scale=scale)
                        finite = finite_losses(out, tasks.names, step + 1, ddp=ddp, skip=cfg.skip_nonfinite)
                        if finite:
                            scaler.scale(out.total / group).backward()
                    if finite:
                        parts = [
                            *(out.losses[n].detach() for n in tasks.names),
                            out.weighted,
                            torch.ones((), device=device),
                        ]
                        running += torch.stack(parts).double()
                    skipped = skipped or not finite
                    batch_index += 1
                weighting.sync_grads()  # learned task weights live outside DDP: average their grads
                if skipped:  # --skip-nonfinite: this step's gradients are dropped, no update
                    reporter.message(f"step {step + 1}: skipped, a loss was not finite")
                    skipped = False
                else:
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                weighting.after_step()
                step += 1
                run_steps += 1

                logs = None
                if step % cfg.log_every == 0:
                    losses = {n: float(out.losses[n].detach()) for n in tasks.names}
                    total = float(out.weighted)
                    logs = {
                        "losses": losses,
                        "total": total,
                        "weights": weighting.weights(),
                        "lr": scheduler.get_last_lr()[0],
                    }
                    if writer is not None:
                        writer.add_scalar("train/total", total, step)
                        for n, v in losses.items():
                            writer.add_scalar(f"train/loss/{n}", v, step)
                reporter.step(step, logs)
                if cfg.max_steps and step >= cfg.max_steps:
                    stopped = True
                    break

            elapsed = time.perf_counter() - started
            run_wait += wait
            if stopped and batch_index < batches_per_epoch:
                # stopped inside the epoch: the checkpoint resumes at the next batch. Under DDP each rank
                # holds rank 0's share of the sums afterwards, so they are spread evenly first.
                if ddp:
                    dist.all_reduce(running)
                    running /= world
                    weighting.consolidate()
                if master:
                    save_checkpoint(out_dir / "last.pt", checkpoint_state(epoch, batch_index, running))
                break

            # -- end of epoch: task weights, losses and BatchNorm statistics across ranks, validation,
            #    records, checkpoints
            weighting.epoch_end()
            if ddp:
                dist.all_reduce(running)
                _average_buffers(model)
            count = max(running[-1].item(), 1.0)
            train_losses = dict(zip(tasks.names, (running[:-2] / count).tolist(), strict=True))
            val = None
            if data.val_loader is not None:
                val = evaluate(model, objective, data, device, dtype, channels_last, cfg.seed)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "train": {"losses": train_losses, "total": float(running[-2] / count)},
                "val": val,
                "weights": weighting.weights(),
                "seconds": elapsed,
                "data_wait_share": wait / elapsed if elapsed > 0 else 0.0,
            }
            score = _score(record, tasks, cfg.best_metric)
            record["best"] = score < best
            best = min(best, score)
            history.append(record)
            epoch += 1
            batch_in_epoch = 0
            if master:
                with open(out_dir / METRICS_NAME, "a", encoding="utf-8") as fh:
                    for line in metrics_lines(record, tasks):
                        fh.write(json.dumps(line) + "\n")
                if writer is not None:
                    for n, v in train_losses.items():
                        writer.add_scalar(f"epoch/train_loss/{n}", v, epoch)
                    for n, metrics in (val or {}).items():
                        for m, v in metrics.items():
                            if v is not None:
                                writer.add_scalar(f"val/{n}/{m}", v, epoch)
                state = checkpoint_state(epoch, 0)
                save_checkpoint(out_dir / "last.pt", state)
                if record["best"]:
                    save_checkpoint(out_dir / "best.pt", state)
            reporter.epoch_end(record)
            if stopped:
                break
    finally:
        data.close()
        if writer is not None:
            writer.close()

    wall = time.perf_counter() - run_started
    return TrainResult(
        out_dir=out_dir,
        model=model,
        objective=objective,
        tasks=tasks,
        config=cfg,
        step=step,
        epoch=epoch,
        history=history,
        steps_per_second=run_steps / wall if wall > 0 else 0.0,
        data_wait_share=run_wait / wall if wall > 0 else 0.0,
        rank=rank,
    )
