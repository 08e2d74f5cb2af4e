"""``infonce``: NT-Xent. Without ``momentum_base`` SimCLR's, between the two online views; with it US3L's
Eq. 2, each view's online output against the momentum encoder's output of the other view."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..losses import momentum_nt_xent, nt_xent
from .base import Objective, Pair, register

if TYPE_CHECKING:
    from ..ssl import SSLModel


@register("infonce")
class NTXent(Objective):
    """SimCLR (2N-2 in-batch negatives) or US3L Eq. 2 (2N-2 online and momentum negatives)."""

    def describe(self) -> tuple[str, str]:
        if self.cfg.momentum_base:
            return "nt_xent(online, momentum) [Eq. 2]", "momentum, other view"
        return "nt_xent(online views)", "other view (in-batch)"

    def loss(self, h: Pair, z: Pair, k: Pair | None, model: SSLModel) -> torch.Tensor:
        if k is None:
            return nt_xent(*h, self.cfg.temperature)
        return momentum_nt_xent(*h, *k, self.cfg.temperature)
