"""LARS (layer-wise adaptive rate scaling), the optimizer of SimSiam's linear evaluation protocol.

For each parameter ``p`` with gradient ``g``: matrices and convolution kernels (``p.ndim > 1``) get
weight decay ``g + wd * p`` and the trust ratio ``q = eta * ||p|| / ||g||`` (1 when either norm is 0);
biases and other vectors are neither decayed nor adapted. Then heavy-ball momentum:
``v <- m * v + q * g``, ``p <- p - lr * v``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS with momentum; ``trust_coefficient`` is eta (SimSiam: 0.001)."""

    def __init__(self, params: Iterable[torch.nn.Parameter] | Iterable[dict], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS needs lr > 0, momentum >= 0, weight_decay >= 0 and trust_coefficient > 0, got "
                             f"{lr}, {momentum}, {weight_decay}, {trust_coefficient}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), group["trust_coefficient"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    g = g.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
