"""Caffe's losses layers (the loss layers and Accuracy) against real BVLC Caffe's outputs and gradients."""

from __future__ import annotations

import pytest
from caffe_layer_cases import family_cases, run_case


@pytest.mark.parametrize("case", family_cases("losses"))
def test_layer_matches_the_caffe_golden(case):
    assert run_case(case) == []
