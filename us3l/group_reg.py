"""Group regularization (US3L Eq. 4-5), used in place of weight decay on the slimmable backbone.

Each conv layer's output channels (and the matching BatchNorm's weight and bias) are split into
``G`` ordered groups (channel ``c`` of ``C`` is in group ``floor(c G / C)``). Group ``g`` (0-based)
has coefficient ``lambda_g = lambda (1 - g alpha)`` and the penalty is
``sum_layers sum_g lambda_g ||W_g||^2``. ``lambda = weight_decay / 2``, so that ``alpha = 0`` gives
exactly SGD weight decay (gradient ``weight_decay * W``). ``alpha`` ramps linearly from 0 to its
value over ``ramp_iters`` iterations (the first half of training by default in the program).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import USBatchNorm2d, USConv2d


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
                 ramp_iters: int = 0) -> None:
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if not 0.0 <= alpha * (groups - 1) <= 1.0:
            raise ValueError(f"alpha {alpha} makes the last group's coefficient negative with {groups} groups")
        self.params = regularized_parameters(model)
        self.weight_decay, self.alpha, self.groups, self.ramp_iters = weight_decay, alpha, groups, ramp_iters

    def alpha_at(self, iteration: int) -> float:
        """``alpha`` at ``iteration``: linear ramp from 0 over ``ramp_iters`` iterations, then constant."""
        if self.ramp_iters <= 0:
            return self.alpha
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
