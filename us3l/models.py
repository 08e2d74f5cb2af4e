"""Universally slimmable ResNet-18/34/50/101 with torchvision's module structure and names."""

from __future__ import annotations

import torch
from torch import nn

from .channels import BlockPlan, channel_plan, check_width_range
from .layers import USBatchNorm2d, USConv2d, USLinear

STEMS = ("imagenet", "cifar")


class USBasicBlock(nn.Module):
    """Two 3x3 convs (torchvision ``BasicBlock`` names) with the channels of ``p``."""

    def __init__(self, p: BlockPlan) -> None:
        super().__init__()
        self.conv1 = USConv2d(p.cin, p.mid, 3, stride=p.stride, padding=1)
        self.bn1 = USBatchNorm2d(p.mid)
        self.conv2 = USConv2d(p.mid, p.out, 3, padding=1)
        self.bn2 = USBatchNorm2d(p.out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class USBottleneck(nn.Module):
    """1x1, 3x3 (stride here, as torchvision), 1x1 (torchvision ``Bottleneck`` names) with the channels of ``p``."""

    def __init__(self, p: BlockPlan) -> None:
        super().__init__()
        self.conv1 = USConv2d(p.cin, p.mid, 1)
        self.bn1 = USBatchNorm2d(p.mid)
        self.conv2 = USConv2d(p.mid, p.mid, 3, stride=p.stride, padding=1)
        self.bn2 = USBatchNorm2d(p.mid)
        self.conv3 = USConv2d(p.mid, p.out, 1)
        self.bn3 = USBatchNorm2d(p.out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


BLOCKS: dict[str, type[nn.Module]] = {"basic": USBasicBlock, "bottleneck": USBottleneck}


def _downsample(p: BlockPlan) -> nn.Sequential | None:
    """The projection shortcut of ``p`` (1x1 conv and BN), if it has one."""
    if not p.shortcut:
        return None
    return nn.Sequential(USConv2d(p.cin, p.out, 1, stride=p.stride), USBatchNorm2d(p.out))


class USResNet(nn.Module):
    """A universally slimmable ResNet built from ``channel_plan(arch, 1.0)``: its full-width layers.

    ``num_classes=0`` gives a backbone whose output is the pooled feature (``fc`` is the identity).
    ``stem="cifar"`` uses a 3x3 stride-1 first conv and no max-pool.
    """

    def __init__(self, arch: str, stem: str = "imagenet", num_classes: int = 1000,
                 width_range: tuple[float, float] = (0.25, 1.0)) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        lo, hi = width_range
        lo, hi = check_width_range(lo, hi)
        plan = channel_plan(arch, 1.0)
        self.arch, self.stem, self.num_classes = arch, stem, num_classes
        self.width_range = (lo, hi)
        self.width = 1.0
        if stem == "imagenet":
            self.conv1 = USConv2d(3, plan.stem, 7, stride=2, padding=3, slim_in=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = USConv2d(3, plan.stem, 3, stride=1, padding=1, slim_in=False)
            self.maxpool = nn.Identity()
        self.bn1 = USBatchNorm2d(plan.stem)
        self.relu = nn.ReLU(inplace=True)
        block = BLOCKS[plan.block]
        self.num_stages = len(plan.stages)
        for i, stage in enumerate(plan.stages, start=1):
            setattr(self, f"layer{i}", nn.Sequential(*(block(p) for p in stage.blocks)))
        self.feature_dim = plan.feature_dim
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = USLinear(plan.feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation (zero_init_residual=False); Linear keeps nn.Linear's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs ``stem``, ``res2`` .. ``res5`` (``layer1`` .. ``layer4``) at the current width."""
        out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        y = out["stem"]
        for i in range(1, self.num_stages + 1):
            y = getattr(self, f"layer{i}")(y)
            out[f"res{i + 1}"] = y
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_stages(x)[f"res{self.num_stages + 1}"]
        return self.fc(torch.flatten(self.avgpool(y), 1))


def _factory(arch: str):
    def build(stem: str = "imagenet", num_classes: int = 1000,
              width_range: tuple[float, float] = (0.25, 1.0)) -> USResNet:
        return USResNet(arch, stem=stem, num_classes=num_classes, width_range=width_range)

    build.__name__ = f"us_{arch}"
    build.__doc__ = f"Universally slimmable {arch} (full width until :func:`us3l.set_width`)."
    return build


us_resnet18 = _factory("resnet18")
us_resnet34 = _factory("resnet34")
us_resnet50 = _factory("resnet50")
us_resnet101 = _factory("resnet101")


def build_model(arch: str, **kwargs) -> USResNet:
    """``us_<arch>(**kwargs)`` by name."""
    return USResNet(arch, **kwargs)
