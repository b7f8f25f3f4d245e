"""Missing labels in training: losses, metrics and task weightings skip them, element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtldata.tasks import MISSING_CLASS, LabelSlicer, TaskSet, TaskSpec
from mtldata.train.losses import (
    MultiTaskObjective,
    euclidean_loss,
    sigmoid_cross_entropy_loss,
    softmax_with_loss,
)
from mtldata.train.metrics import TaskMetrics, format_table
from mtldata.train.weighting import DWA, GradNorm, make_weighting

NAN = math.nan
TASKS = TaskSet(
    (
        TaskSpec("cls", slice(0, 1), "softmax", classes=3),
        TaskSpec("attr", slice(1, 3), "sigmoid"),
        TaskSpec("reg", slice(3, 5), "euclidean"),
    ),
    num_labels=5,
)
# A fixed batch of 4 label rows with missing entries (NaN), as a reader gives them.
ROWS = np.array(
    [
        [0, 1, NAN, 0.5, NAN],
        [NAN, 0, 1, 1.0, 2.0],
        [2, NAN, NAN, NAN, NAN],
        [1, 1, 0, -1.0, 0.0],
    ],
    dtype=np.float32,
)
OUTPUTS = {
    "cls": torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [0.1, 0.2, 0.3], [1.0, 0.0, 2.0]]),
    "attr": torch.tensor([[1.5, -0.5], [0.5, 2.0], [3.0, -3.0], [-1.0, 0.25]]),
    "reg": torch.tensor([[0.0, 1.0], [1.5, 1.0], [9.0, 9.0], [-0.5, 0.5]]),
}


def _bce(x: float, t: float) -> float:
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_slicer_marks_a_missing_class_and_keeps_nan_in_float_blocks():
    targets = LabelSlicer.from_tasks(TASKS)(ROWS)
    assert targets["cls"].tolist() == [0, MISSING_CLASS, 2, 1]
    assert torch.isnan(targets["attr"]).tolist() == [
        [False, True],
        [False, False],
        [True, True],
        [False, False],
    ]


def test_losses_equal_a_hand_computation_on_a_batch_with_missing_entries():
    targets = LabelSlicer.from_tasks(TASKS)(ROWS)
    o = {k: v.tolist() for k, v in OUTPUTS.items()}
    # softmax: the missing class is ignored; VALID normalisation over the 3 labelled samples
    cls = (_ce(o["cls"][0], 0) + _ce(o["cls"][2], 2) + _ce(o["cls"][3], 1)) / 3
    # sigmoid: sum over the 5 labelled elements / (5 labelled / k=2)
    labelled = [(0, 0, 1), (1, 0, 0), (1, 1, 1), (3, 0, 1), (3, 1, 0)]
    attr = sum(_bce(o["attr"][i][j], t) for i, j, t in labelled) / (5 / 2)
    # euclidean: sum of squared differences over the 5 labelled values / (2 * 5 labelled / k=2)
    pairs = [(0, 0, 0.5), (1, 0, 1.0), (1, 1, 2.0), (3, 0, -1.0), (3, 1, 0.0)]
    reg = sum((o["reg"][i][j] - t) ** 2 for i, j, t in pairs) / (2 * 5 / 2)
    assert softmax_with_loss(OUTPUTS["cls"], targets["cls"]).item() == pytest.approx(cls, rel=1e-6)
    assert sigmoid_cross_entropy_loss(OUTPUTS["attr"], targets["attr"]).item() == pytest.approx(
        attr, rel=1e-6
    )
    assert euclidean_loss(OUTPUTS["reg"], targets["reg"]).item() == pytest.approx(reg, rel=1e-6)


def test_missing_entries_get_no_gradient_and_no_nan():
    targets = LabelSlicer.from_tasks(TASKS)(ROWS)
    outputs = {k: v.clone().requires_grad_() for k, v in OUTPUTS.items()}
    objective = MultiTaskObjective(TASKS, make_weighting("fixed", TASKS))
    objective(outputs, targets).total.backward()
    for name in ("attr", "reg"):
        grad = outputs[name].grad
        assert torch.isfinite(grad).all()
        assert (grad[torch.isnan(targets[name])] == 0).all()  # a missing element contributes nothing
        assert (grad[~torch.isnan(targets[name])] != 0).all()
    assert torch.isfinite(outputs["cls"].grad).all() and (outputs["cls"].grad[1] == 0).all()


def test_fully_labelled_losses_are_bit_identical_to_caffes_formulas():
    torch.manual_seed(3)
    x, t = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float()
    caffe_sigmoid = F.binary_cross_entropy_with_logits(x, t, reduction="none").sum() / 6
    assert torch.equal(sigmoid_cross_entropy_loss(x, t), caffe_sigmoid)
    p, y = torch.randn(6, 2), torch.randn(6, 2)
    assert torch.equal(euclidean_loss(p, y), ((p - y) ** 2).sum() / 12.0)


def test_metrics_count_labelled_entries_only_and_the_table_shows_how_many():
    targets = LabelSlicer.from_tasks(TASKS)(ROWS)
    m = TaskMetrics(TASKS)
    m.update(OUTPUTS, targets, {t.name: torch.tensor(1.0) for t in TASKS})
    got = m.compute()
    # cls predictions: 0, 1, 2, 2 against 0, -, 2, 1 -> 2 of 3 labelled right
    assert got["cls"]["accuracy"] == pytest.approx(2 / 3) and got["cls"]["labelled"] == 3
    # attr: predicted bits (x > 0) 1,0 | 1,1 | 1,0 | 0,1 against 1,- | 0,1 | -,- | 1,0: wrong (1,0), (3,0), (3,1)
    assert got["attr"]["mean_error"] == pytest.approx(3 / 5) and got["attr"]["labelled"] == 5
    # tp (0,0) (1,1); fp (1,0) (3,1); fn (3,0)
    assert got["attr"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    diffs = [0.5, 0.5, 1.0, 0.5, 0.5]
    assert got["reg"]["mae"] == pytest.approx(sum(diffs) / 5) and got["reg"]["labelled"] == 5
    assert got["reg"]["rmse"] == pytest.approx(math.sqrt(sum(d * d for d in diffs) / 5))
    table = format_table({"train": {"losses": {}}, "weights": {}, "val": got}, TASKS)
    header, _, cls_row, attr_row, _ = table.splitlines()
    assert header.split()[-1] == "labelled" and cls_row.split()[-1] == "3" and attr_row.split()[-1] == "5"


def _absent_batch() -> dict[str, torch.Tensor]:
    """Labels where `attr` is missing in every sample of the batch."""
    rows = ROWS.copy()
    rows[:, 1:3] = NAN
    return LabelSlicer.from_tasks(TASKS)(rows)


@pytest.mark.parametrize("method", ["fixed", "uncertainty", "dwa", "gradnorm"])
def test_a_task_absent_from_the_batch_gives_zero_loss_and_moves_no_weight(method):
    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 8)
    heads = torch.nn.ModuleDict(
        {"cls": torch.nn.Linear(8, 3), "attr": torch.nn.Linear(8, 2), "reg": torch.nn.Linear(8, 2)}
    )
    weighting = make_weighting(method, TASKS)
    objective = MultiTaskObjective(TASKS, weighting)
    targets = _absent_batch()
    features = trunk(torch.randn(4, 4))
    out = objective({k: h(features) for k, h in heads.items()}, targets, shared=trunk.weight)
    assert out.losses["attr"].item() == 0.0
    assert all(torch.isfinite(v) for v in out.losses.values()) and torch.isfinite(out.total)
    out.total.backward()
    assert heads["attr"].weight.grad is None or (heads["attr"].weight.grad == 0).all()
    for p in weighting.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad[1] == 0  # the absent task's learned weight gets no gradient
    if isinstance(weighting, DWA):
        assert weighting.loss_count.tolist() == [1.0, 0.0, 1.0] and weighting.loss_sum[1] == 0
    if isinstance(weighting, GradNorm):
        assert weighting.has_initial.tolist() == [True, False, True]


def test_dwa_keeps_a_tasks_last_mean_through_an_epoch_without_its_labels():
    dwa = DWA(TASKS)
    full = LabelSlicer.from_tasks(TASKS)(np.nan_to_num(ROWS, nan=0.0))
    present = torch.tensor([True, True, True])
    for losses in ([1.0, 2.0, 3.0], [0.5, 1.0, 1.5]):
        dwa({n: torch.tensor(v) for n, v in zip(TASKS.names, losses, strict=True)}, present=present)
        dwa.epoch_end()
    absent = torch.tensor([True, False, True])
    dwa({n: torch.tensor(v) for n, v in zip(TASKS.names, [0.25, 0.0, 0.75], strict=True)}, present=absent)
    dwa.epoch_end()
    assert dwa.history[1].tolist() == [0.25, 1.0, 0.75]  # attr keeps 1.0: ratio 1, not 0
    assert torch.isfinite(dwa.dyn).all() and full["cls"].tolist() == [0, 0, 2, 1]


def test_gradnorm_takes_a_tasks_initial_loss_from_the_first_batch_that_labels_it():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 8)
    heads = torch.nn.ModuleDict(
        {"cls": torch.nn.Linear(8, 3), "attr": torch.nn.Linear(8, 2), "reg": torch.nn.Linear(8, 2)}
    )
    gn = GradNorm(TASKS)
    objective = MultiTaskObjective(TASKS, gn)
    x = torch.randn(4, 4)
    objective({k: h(trunk(x)) for k, h in heads.items()}, _absent_batch(), shared=trunk.weight)
    assert gn.initial[1] == 0 and not gn.has_initial[1]
    full = LabelSlicer.from_tasks(TASKS)(np.nan_to_num(ROWS, nan=1.0))
    out = objective({k: h(trunk(x)) for k, h in heads.items()}, full, shared=trunk.weight)
    assert gn.has_initial.all() and gn.initial[1] == pytest.approx(out.losses["attr"].item())


def test_weighting_state_from_before_per_task_counts_still_loads():
    old_gn = GradNorm(TASKS).state_dict()
    old_gn["has_initial"] = torch.tensor(True)
    gn = GradNorm(TASKS)
    gn.load_state_dict(old_gn)
    assert gn.has_initial.tolist() == [True, True, True]
    old_dwa = DWA(TASKS).state_dict()
    old_dwa["loss_count"] = torch.tensor(4.0, dtype=torch.float64)
    dwa = DWA(TASKS)
    dwa.load_state_dict(old_dwa)
    assert dwa.loss_count.tolist() == [4.0, 4.0, 4.0]
