"""BatchNorm calibration: running statistics of a width from a few batches at that width."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .layers import set_width


def _inputs(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def calibrate_bn(model: nn.Module, width: float, loader: Iterable, num_batches: int,
                 device: torch.device | str | None = None) -> nn.Module:
    """Set ``model`` to ``width`` and recompute every BatchNorm's running statistics.

    Statistics are reset, then accumulated as a cumulative (equal-weight) average over the first
    ``num_batches`` batches of ``loader`` (a batch is a tensor or a tuple whose first item is the
    input). No gradients are computed; the model's train/eval mode and BN momenta are restored.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    set_width(model, width)
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    try:
        for batch in loader:
            if seen == num_batches:
                break
            model(_inputs(batch).to(device))
            seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration loader yielded no batches")
    return model
