"""Missing labels in a dataset stock Caffe reads (--emit-prototxt): stored as an ignore_label, or refused.

Caffe reads the label values as stored, and its losses cannot see NaN: SoftmaxWithLoss and
SigmoidCrossEntropyLoss skip a target equal to their `ignore_label` (compared as an int), EuclideanLoss
skips nothing. So a missing softmax or sigmoid label is written as the task's ignore_label (its own,
or DEFAULT_IGNORE when it has none), the manifest records the value per column so that mtldata's
readers turn it back into NaN, and a euclidean task with a missing value is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mtldata.tasks import TaskSet

DEFAULT_IGNORE = -1  # never a class index nor a 0/1 target, so it cannot collide with a real label


@dataclass(frozen=True)
class CaffeMissing:
    """How a Caffe-bound conversion stores missing labels, and the tasks as the prototxt should say."""

    stored_as: dict[int, float]  # label column -> the ignore value written in place of NaN
    forbidden: dict[int, str]  # label column -> the euclidean task that owns it
    tasks: TaskSet  # with ignore_label set on every softmax and sigmoid task


def caffe_missing(tasks: TaskSet) -> CaffeMissing:
    """The ignore value of each softmax/sigmoid column and the euclidean columns of `tasks`."""
    stored_as: dict[int, float] = {}
    forbidden: dict[int, str] = {}
    specs = []
    for task in tasks:
        if task.kind == "euclidean":
            forbidden.update({c: task.name for c in range(task.start, task.stop)})
            specs.append(task)
            continue
        ignore = task.ignore_label if task.ignore_label is not None else DEFAULT_IGNORE
        stored_as.update({c: float(ignore) for c in range(task.start, task.stop)})
        specs.append(replace(task, ignore_label=ignore))
    return CaffeMissing(
        stored_as,
        forbidden,
        TaskSet(tuple(specs), num_labels=tasks.num_labels, allow_overlap=tasks.allow_overlap),
    )
