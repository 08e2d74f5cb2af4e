"""Multi-process training helpers (``torchrun``; NCCL on CUDA, gloo on CPU).

Gradients are averaged by one all-reduce per iteration (after all widths' backward passes) rather
than by DDP's per-backward hooks, so the sandwich's gradient accumulation needs no ``no_sync``.
Losses see the global batch: :func:`gather` concatenates a tensor over processes with gradient, and
:func:`convert_sync_bn` makes BatchNorm normalise with global batch statistics, so N processes
compute the same loss as one process with the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from us3l.layers import USBatchNorm2d
from us3l.losses import at_least_fp32


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over processes in rank order; gradients flow back to each process's part.

    Every process computes the same global loss, so the backward all-reduce sums ``world_size``
    identical contributions; :func:`average_gradients` divides by ``world_size``.
    """
    return _Gather.apply(x) if active() else x


def _global_moments(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
    dist.all_reduce(count)
    mean = _AllReduceSum.apply(x.sum(dim=dims)) / count
    shape = [1, -1] + [1] * (x.dim() - 2)
    var = _AllReduceSum.apply((x - mean.view(shape)).pow(2).sum(dim=dims)) / count
    return mean, var, float(count)


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, c: int) -> torch.Tensor:
    dims = [0] + list(range(2, x.dim()))
    mean, var, n = _global_moments(at_least_fp32(x), dims)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean[:c].mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var[:c].mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (at_least_fp32(x) - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight[:c].view(shape) + bn.bias[:c].view(shape)
    return y.to(x.dtype)


class SyncUSBatchNorm2d(USBatchNorm2d):
    """:class:`USBatchNorm2d` that trains on global batch statistics when several processes run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        c = self.active_channels()
        if x.shape[1] != c:
            raise RuntimeError(f"USBatchNorm2d at width {self.width:g} expects {c} channels, got {x.shape[1]}")
        return _sync_batch_norm(self, x, c)


class SyncBatchNorm1d(nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` that trains on global batch statistics when several processes run
    (works with gloo on CPU, unlike ``nn.SyncBatchNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        return _sync_batch_norm(self, x, self.num_features)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Switch every USBatchNorm2d / BatchNorm1d of ``model`` in place to its synchronised subclass
    (same parameters, buffers and state-dict keys)."""
    for m in model.modules():
        if type(m) is USBatchNorm2d:
            m.__class__ = SyncUSBatchNorm2d
        elif type(m) is nn.BatchNorm1d:
            m.__class__ = SyncBatchNorm1d
    return model


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce and average the gradients of ``params`` over processes (one flat buffer)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (so that all save and stop at the same iteration)."""
    if not active():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier() -> None:
    if active():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

