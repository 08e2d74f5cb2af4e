"""Parameter and multiply-accumulate counts of a ResNet at a width."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .export import export_subnet
from .models import USResNet


def _layer_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-accumulates of one layer call (0 for layers that are not counted)."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out[0].numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    if isinstance(m, (nn.BatchNorm2d, nn.ReLU)):
        return out[0].numel()
    if isinstance(m, nn.MaxPool2d):
        return out[0].numel() * m.kernel_size * m.kernel_size
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return inp[0].numel()
    return 0


def _macs(net: nn.Module, input_size: tuple[int, int]) -> int:
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(m, inp[0], out)

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
    return total


@lru_cache(maxsize=128)
def count_params_macs(arch: str, width: float, input_size: int | tuple[int, int] = 224,
                      num_classes: int = 1000, stem: str = "imagenet") -> tuple[int, int]:
    """(parameters, MACs) of ``arch`` at ``width`` for one image of ``input_size``.

    Parameters include BatchNorm affine terms. MACs count convolutions and the classifier plus one
    operation per output element of BatchNorm and ReLU, k*k per max-pool output and one per
    average-pooled input element: the convention that reproduces the US3L paper's Tables 6/12
    (conv + linear alone give 1.81G for ResNet-18, where the paper prints 1.82G).
    ``num_classes=0`` counts the backbone alone. The caller's random stream is left as it was (the network
    built here is initialised on a forked one), so a count never changes what a seeded run draws next.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    with torch.random.fork_rng(devices=[]):
        model = USResNet(arch, stem=stem, num_classes=num_classes, width_range=(min(width, 1.0), 1.0))
        net = export_subnet(model, width)
    params = sum(p.numel() for p in net.parameters())
    return params, _macs(net, size)
