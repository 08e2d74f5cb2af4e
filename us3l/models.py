"""Universally slimmable ResNet-18/34/50/101 with torchvision's module structure and names."""

from __future__ import annotations

import torch
from torch import nn

from .channels import STEM_CHANNELS, arch_spec
from .layers import USBatchNorm2d, USConv2d, USLinear

STEMS = ("imagenet", "cifar")


class USBasicBlock(nn.Module):
    """Two 3x3 convs (torchvision ``BasicBlock`` names)."""

    def __init__(self, cin: int, mid: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = USConv2d(cin, mid, 3, stride=stride, padding=1)
        self.bn1 = USBatchNorm2d(mid)
        self.conv2 = USConv2d(mid, out, 3, padding=1)
        self.bn2 = USBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class USBottleneck(nn.Module):
    """1x1, 3x3 (stride here, as torchvision), 1x1 (torchvision ``Bottleneck`` names)."""

    def __init__(self, cin: int, mid: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = USConv2d(cin, mid, 1)
        self.bn1 = USBatchNorm2d(mid)
        self.conv2 = USConv2d(mid, mid, 3, stride=stride, padding=1)
        self.bn2 = USBatchNorm2d(mid)
        self.conv3 = USConv2d(mid, out, 1)
        self.bn3 = USBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _downsample(cin: int, out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == out:
        return None
    return nn.Sequential(USConv2d(cin, out, 1, stride=stride), USBatchNorm2d(out))


class USResNet(nn.Module):
    """A universally slimmable ResNet.

    ``num_classes=0`` gives a backbone whose output is the pooled feature (``fc`` is the identity).
    ``stem="cifar"`` uses a 3x3 stride-1 first conv and no max-pool.
    """

    def __init__(self, arch: str, stem: str = "imagenet", num_classes: int = 1000,
                 width_range: tuple[float, float] = (0.25, 1.0)) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        lo, hi = width_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"width range must satisfy 0 < min <= max <= 1, got [{lo}, {hi}]")
        spec = arch_spec(arch)
        self.arch, self.stem, self.num_classes = arch, stem, num_classes
        self.width_range = (float(lo), float(hi))
        self.width = 1.0
        if stem == "imagenet":
            self.conv1 = USConv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, slim_in=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = USConv2d(3, STEM_CHANNELS, 3, stride=1, padding=1, slim_in=False)
            self.maxpool = nn.Identity()
        self.bn1 = USBatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        block = USBasicBlock if spec["block"] == "basic" else USBottleneck
        cin = STEM_CHANNELS
        for i, (n, mid, out) in enumerate(zip(spec["layers"], spec["mid"], spec["out"])):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, mid, out, stride=2 if (b == 0 and i > 0) else 1))
                cin = out
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = cin
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = USLinear(cin, num_classes) if num_classes > 0 else nn.Identity()
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
        """Stage outputs ``stem``, ``res2`` .. ``res5`` at the current width."""
        out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        y = out["stem"]
        for i in range(1, 5):
            y = getattr(self, f"layer{i}")(y)
            out[f"res{i + 1}"] = y
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_stages(x)["res5"]
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
