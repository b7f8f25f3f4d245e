"""Which layers of a Caffe net exist in a given state (phase, level, stages): Net::FilterNet's rules.

Kept apart from the torch translation so that reading a prototxt's tasks stays torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtldata.caffe.caffe_pb2 import TEST, TRAIN, LayerParameter, NetParameter, NetStateRule

PHASES = {"train": TRAIN, "test": TEST}


def state_meets_rule(rule: NetStateRule, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Caffe's Net::StateMeetsRule: every condition the rule sets holds for the state."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layers_in_state(
    net: NetParameter, phase: str, level: int = 0, stages: Sequence[str] = ()
) -> list[LayerParameter]:
    """The layers Caffe keeps: those with an include rule met, or with no exclude rule met.

    Raises ValueError for an unknown phase, and for a layer with both kinds of rule (Caffe refuses it).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
    code, stage_set = PHASES[phase], frozenset(stages)
    kept = []
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise ValueError(f"layer {layer.name!r}: specify either include rules or exclude rules, not both")
        if layer.include:
            keep = any(state_meets_rule(r, code, level, stage_set) for r in layer.include)
        else:
            keep = not any(state_meets_rule(r, code, level, stage_set) for r in layer.exclude)
        if keep:
            kept.append(layer)
    return kept
