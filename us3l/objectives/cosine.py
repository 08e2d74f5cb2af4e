"""``mse``: negative cosine through a predictor. BYOL with ``momentum_base`` (the target is the momentum
projection of the other view), SimSiam without (the other view's own projection, detached)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..losses import unit_mse
from .base import Objective, Pair, register

if TYPE_CHECKING:
    from ..ssl import SSLModel


@register("mse")
class NegativeCosine(Objective):
    """BYOL / SimSiam: symmetric ``1 - cos`` of each view's prediction and the other view's target."""

    has_predictor = True

    def describe(self) -> tuple[str, str]:
        return "cosine", "momentum, other view" if self.cfg.momentum_base else "own projection (detached), other view"

    def loss(self, h: Pair, z: Pair, k: Pair | None, model: SSLModel) -> torch.Tensor:
        t1, t2 = k if k is not None else (z[0].detach(), z[1].detach())
        return 0.5 * (unit_mse(h[0], t2) + unit_mse(h[1], t1))
