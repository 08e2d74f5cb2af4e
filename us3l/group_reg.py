"""Group regularization (US3L Eq. 4-5), used in place of weight decay on the slimmable backbone.

Each conv layer's output channels (and the matching BatchNorm's weight and bias) are split into
``G`` ordered groups (channel ``c`` of ``C`` is in group ``floor(c G / C)``). Group ``g`` (0-based)
has coefficient ``lambda_g = lambda (1 - g alpha)`` and the penalty is
``sum_layers sum_g lambda_g ||W_g||^2``. ``lambda = weight_decay / 2``, so that ``alpha = 0`` gives
exactly SGD weight decay (gradient ``weight_decay * W``). A negative ``alpha`` decays later groups
*more* (Table 14's reversed case); ``1 - (G - 1) alpha`` must stay >= 0.

Schedules of ``alpha`` over training (:data:`ALPHA_SCHEDULES`, ``ramp_iters`` iterations of warm-up):
- ``constant``: ``alpha`` from the first iteration (the paper's Eq. 5 as written);
- ``ramp``: linear from 0 to ``alpha`` over ``ramp_iters`` (the authors' CIFAR config: warm-up 0,
  ramp to half-way);
- ``step``: plain L2 (``alpha = 0``) for ``ramp_iters``, then the full ``alpha`` (the authors' ImageNet
  config: 50 of 100 epochs of plain L2).

Coverage: the slimmable backbone's conv weights and BN affine parameters only. The projector and
heads keep ordinary optimizer weight decay (the authors' regulariser also groups the heads' 1-D
parameters and skips the auxiliary head on the max width's pass; their 2-D head weights get plain
L2, as here).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import USBatchNorm2d, USConv2d

ALPHA_SCHEDULES = ("constant", "ramp", "step")


def check_alpha(alpha: float, groups: int) -> None:
    """Raise ``ValueError`` (naming the fix) if the last group's coefficient ``1 - (G - 1) alpha`` is negative."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if alpha * (groups - 1) > 1.0:
        raise ValueError(f"group_alpha {alpha:g} with {groups} groups makes the last group's coefficient "
                         f"1 - {groups - 1} x {alpha:g} negative; use group_alpha <= {1 / max(groups - 1, 1):.4g} "
                         f"(negative values decay later groups more)")


def group_index(num_channels: int, groups: int) -> torch.Tensor:
    """Group (0..groups-1) of each of ``num_channels`` ordered channels."""
    return torch.arange(num_channels) * groups // num_channels


def channel_coefficients(num_channels: int, weight_decay: float, alpha: float, groups: int = 8) -> torch.Tensor:
    """Per-channel ``lambda_g = (weight_decay / 2) (1 - g alpha)``."""
    return (weight_decay / 2) * (1.0 - group_index(num_channels, groups).double() * alpha)


def regularized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Conv weights and BN affine parameters of ``model``'s slimmable layers (grouped by output channel)."""
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, USConv2d):
            params.append(m.weight)
            if m.bias is not None:
                params.append(m.bias)
        elif isinstance(m, USBatchNorm2d) and m.affine:
            params += [m.weight, m.bias]
    return params


class GroupRegularizer:
    """Group regularization of a model's slimmable conv and BN parameters."""

    def __init__(self, model: nn.Module, weight_decay: float, alpha: float = 0.05, groups: int = 8,
                 ramp_iters: int = 0, schedule: str = "ramp") -> None:
        check_alpha(alpha, groups)
        if schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"group_schedule={schedule!r} is not one of {ALPHA_SCHEDULES}")
        self.params = regularized_parameters(model)
        self.weight_decay, self.alpha, self.groups, self.ramp_iters = weight_decay, alpha, groups, ramp_iters
        self.schedule = schedule

    def alpha_at(self, iteration: int) -> float:
        """``alpha`` at ``iteration`` under the schedule (see the module docstring)."""
        if self.schedule == "constant" or self.ramp_iters <= 0:
            return self.alpha
        if self.schedule == "step":
            return self.alpha if iteration >= self.ramp_iters else 0.0
        return self.alpha * min(1.0, iteration / self.ramp_iters)

    def _coef(self, p: torch.Tensor, alpha: float) -> torch.Tensor:
        coef = channel_coefficients(p.shape[0], self.weight_decay, alpha, self.groups)
        return coef.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))

    def penalty(self, alpha: float) -> torch.Tensor:
        """``sum lambda_g ||W_g||^2`` over all grouped parameters (differentiable)."""
        return sum((self._coef(p, alpha) * p.pow(2)).sum() for p in self.params)

    @torch.no_grad()
    def add_grad_(self, alpha: float) -> None:
        """Add the penalty's gradient ``2 lambda_g W`` to each parameter's ``.grad``."""
        for p in self.params:
            g = 2 * self._coef(p, alpha) * p
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
