"""LARS against its update formula computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from us3l.lars import LARS


def test_two_steps_match_the_formula_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5: adapted and decayed
    b = torch.nn.Parameter(torch.tensor([1.0]))  # a vector: plain momentum SGD
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    gw, gb = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])

    # step 1: d = g + 0.1 w = [1.3, 0.4]; q = 0.01 * 5 / ||d||; v = q d; w -= 0.5 v
    d = [1.3, 0.4]
    q = 0.01 * 5 / math.hypot(*d)
    v = [q * x for x in d]
    expected_w = [3.0 - 0.5 * v[0], 4.0 - 0.5 * v[1]]
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    assert w.tolist()[0] == pytest.approx(expected_w, rel=1e-6)
    assert b.item() == pytest.approx(1.0 - 0.5 * 2.0)

    # step 2: v = 0.9 v + q' d' with the new weights
    d2 = [1.0 + 0.1 * expected_w[0], 0.1 * expected_w[1]]
    q2 = 0.01 * math.hypot(*expected_w) / math.hypot(*d2)
    v2 = [0.9 * v[i] + q2 * d2[i] for i in range(2)]
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    assert w.tolist()[0] == pytest.approx([expected_w[0] - 0.5 * v2[0], expected_w[1] - 0.5 * v2[1]], rel=1e-6)
    assert b.item() == pytest.approx(0.0 - 0.5 * (0.9 * 2.0 + 2.0))


def test_zero_weights_use_a_trust_ratio_of_one():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0, trust_coefficient=0.001)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(w, -torch.ones(2, 2))


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="LARS needs lr > 0"):
        LARS([torch.nn.Parameter(torch.ones(1))], lr=0.0)
