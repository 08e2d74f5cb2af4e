"""Group regularization vs Eq. 4-5 on a hand-made conv weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from us3l.group_reg import GroupRegularizer, channel_coefficients, regularized_parameters
from us3l.layers import USBatchNorm2d, USConv2d


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = USConv2d(2, 16, 1, slim_in=False)
        self.bn = USBatchNorm2d(16)


def _hand_made() -> _Tiny:
    m = _Tiny()
    with torch.no_grad():
        # Output channel c of the conv has both weights equal to c + 1; BN weight 1, bias c / 10.
        m.conv.weight.copy_(torch.arange(1.0, 17.0).view(16, 1, 1, 1).expand(16, 2, 1, 1))
        m.bn.weight.fill_(1.0)
        m.bn.bias.copy_(torch.arange(16.0) / 10)
    return m


def test_coefficients_eq5():
    wd, alpha = 1e-4, 0.05
    coef = channel_coefficients(16, wd, alpha, groups=8)  # 2 channels per group
    lam = wd / 2
    expected = [lam * (1 - (c // 2) * alpha) for c in range(16)]
    assert coef.tolist() == pytest.approx(expected)
    assert coef[0] == pytest.approx(5e-5) and coef[-1] == pytest.approx(5e-5 * 0.65)
    # Uneven split: channel c of 12 is in group floor(8c / 12).
    assert [int(round((1 - x / (lam)) / alpha)) for x in channel_coefficients(12, wd, alpha).tolist()] == \
        [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7]


def test_penalty_value_eq4():
    m = _hand_made()
    wd, alpha = 1e-4, 0.05
    reg = GroupRegularizer(m, wd, alpha=alpha, groups=8)
    lam = wd / 2
    conv = sum(lam * (1 - (c // 2) * alpha) * 2 * (c + 1) ** 2 for c in range(16))
    bn = sum(lam * (1 - (c // 2) * alpha) * (1.0 + (c / 10) ** 2) for c in range(16))
    assert reg.penalty(alpha).item() == pytest.approx(conv + bn, rel=1e-6)


def test_grad_matches_autograd_and_alpha_zero_is_weight_decay():
    m = _hand_made()
    reg = GroupRegularizer(m, 1e-4, alpha=0.05)
    params = regularized_parameters(m)
    auto = torch.autograd.grad(reg.penalty(0.05), params)
    reg.add_grad_(0.05)
    for p, g in zip(params, auto):
        assert torch.allclose(p.grad, g)
        p.grad = None
    reg.add_grad_(0.0)  # alpha = 0: exactly SGD weight decay, grad = wd * W
    for p in params:
        assert torch.allclose(p.grad, 1e-4 * p.detach())


@pytest.mark.parametrize("schedule, alphas", [
    ("ramp", [0.0, 0.025, 0.0495, 0.05, 0.05]),  # the authors' CIFAR config: linear to half-way
    ("step", [0.0, 0.0, 0.0, 0.05, 0.05]),  # the authors' ImageNet config: plain L2, then full alpha
    ("constant", [0.05] * 5),  # Eq. 5 as written
])
def test_alpha_schedules(schedule, alphas):
    reg = GroupRegularizer(_hand_made(), 1e-4, alpha=0.05, ramp_iters=100, schedule=schedule)
    assert [reg.alpha_at(i) for i in (0, 50, 99, 100, 400)] == pytest.approx(alphas)


def test_bad_alpha_names_the_bound_and_negative_alpha_decays_later_groups_more():
    with pytest.raises(ValueError, match="group_alpha <= 0.1429"):
        GroupRegularizer(_hand_made(), 1e-4, alpha=0.2, groups=8)
    with pytest.raises(ValueError, match="group_schedule"):
        GroupRegularizer(_hand_made(), 1e-4, schedule="cosine")
    coef = channel_coefficients(16, 1e-4, -0.05, groups=8)  # Table 14's alpha = -0.05
    assert coef[0] == pytest.approx(5e-5) and coef[-1] == pytest.approx(5e-5 * 1.35)
    assert all(a <= b for a, b in zip(coef.tolist(), coef[1:].tolist()))
