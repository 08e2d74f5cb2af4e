"""Export a slimmable ResNet at one width as a static, narrow torchvision ResNet."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .channels import arch_spec
from .layers import USBatchNorm2d, USConv2d, USLinear, get_width, set_width
from .models import USResNet


def _narrow(m: nn.Module) -> nn.Module:
    """A plain layer holding the first channels of slimmable layer ``m`` at its current width."""
    if isinstance(m, USConv2d):
        cin, cout = m.active_channels()
        new = nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None)
        new.weight.copy_(m.weight[:cout, :cin])
        if m.bias is not None:
            new.bias.copy_(m.bias[:cout])
        return new
    if isinstance(m, USBatchNorm2d):
        c = m.active_channels()
        new = nn.BatchNorm2d(c, eps=m.eps, momentum=m.momentum if m.momentum is not None else 0.1)
        new.weight.copy_(m.weight[:c])
        new.bias.copy_(m.bias[:c])
        new.running_mean.copy_(m.running_mean[:c])
        new.running_var.copy_(m.running_var[:c])
        new.num_batches_tracked.copy_(m.num_batches_tracked)
        return new
    if isinstance(m, USLinear):
        fin, fout = m.active_features()
        new = nn.Linear(fin, fout, bias=m.bias is not None)
        new.weight.copy_(m.weight[:fout, :fin])
        if m.bias is not None:
            new.bias.copy_(m.bias[:fout])
        return new
    raise TypeError(f"not a slimmable layer: {type(m).__name__}")


@torch.no_grad()
def export_subnet(model: USResNet, width: float) -> ResNet:
    """A static ``torchvision.models.ResNet`` equal to ``model`` at ``width``.

    It has torchvision's module classes and parameter names with narrowed shapes, the first channels
    of every weight, and the BatchNorm running statistics ``model`` holds now (calibrate them at
    ``width`` first with :func:`us3l.calibrate_bn`). The CIFAR stem becomes a 3x3 stride-1 conv with
    no max-pool; a backbone without classifier (``num_classes=0``) gets ``fc = nn.Identity()``.
    The exported module is in the same train/eval mode as ``model``, which is left at its width.
    """
    previous = get_width(model)
    set_width(model, width)
    try:
        spec = arch_spec(model.arch)
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec.block]
        net = ResNet(block, list(spec.depths), num_classes=max(model.num_classes, 1))
        if model.stem == "cifar":
            net.maxpool = nn.Identity()
        if model.num_classes == 0:
            net.fc = nn.Identity()
        for name, m in model.named_modules():
            if isinstance(m, (USConv2d, USBatchNorm2d, USLinear)):
                net.set_submodule(name, _narrow(m))
        device = next(model.parameters()).device
        return net.to(device).train(model.training)
    finally:
        set_width(model, previous)
