"""``infonce_qk``: MoCo's query-key InfoNCE. Each view's query against the momentum keys of the other
view (N-1 in-batch negatives), plus a queue of past keys when ``queue_size > 0``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..losses import at_least_fp32, info_nce
from .base import Objective, Pair, register

if TYPE_CHECKING:
    from ..ssl import SSLModel


@register("infonce_qk")
class MoCo(Objective):
    """Symmetric query-key InfoNCE; owns the ``queue`` / ``queue_ptr`` buffers and fills them after each step."""

    def check(self) -> None:
        if not self.cfg.momentum_base:
            raise ValueError("base_loss=infonce_qk scores queries against momentum keys: set momentum_base=true")

    def describe(self) -> tuple[str, str]:
        queue = f" + queue {self.cfg.queue_size}" if self.cfg.queue_size else ""
        return "info_nce q-k" + queue, "momentum, other view"

    def build_buffers(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if not cfg.queue_size:
            return {}
        return {"queue": F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1),
                "queue_ptr": torch.zeros((), dtype=torch.long)}

    def loss(self, h: Pair, z: Pair, k: Pair | None, model: SSLModel) -> torch.Tensor:
        queue = model.queue.clone() if self.cfg.queue_size else None
        t = self.cfg.temperature
        return 0.5 * (info_nce(h[0], k[1], t, queue) + info_nce(h[1], k[0], t, queue))

    @torch.no_grad()
    def after_step(self, k: Pair | None, model: SSLModel) -> None:
        if not self.cfg.queue_size:
            return
        size = model.queue.shape[0]
        keys = F.normalize(at_least_fp32(torch.cat(k)), dim=1)[-size:]
        idx = (model.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        model.queue[idx] = keys
        model.queue_ptr.copy_((model.queue_ptr + keys.shape[0]) % size)
