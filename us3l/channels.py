"""The width rule: how many channels each layer of a slimmable ResNet has at width ``w``.

Every layer rounds its *own* full-width channel count (``make_divisible(C_max * w, 8)``), so
stages at an arbitrary width do not double cleanly (ResNet-50 at 0.35: bottlenecks 24/48/88/176).
Nothing here derives a stage's channels from the previous stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DIVISOR = 8

# Full-width architecture tables: block kind, blocks per stage, bottleneck and output channels per stage.
ARCHS: dict[str, dict] = {
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2), "mid": (64, 128, 256, 512), "out": (64, 128, 256, 512)},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3), "mid": (64, 128, 256, 512), "out": (64, 128, 256, 512)},
    "resnet50": {
        "block": "bottleneck",
        "layers": (3, 4, 6, 3),
        "mid": (64, 128, 256, 512),
        "out": (256, 512, 1024, 2048),
    },
    "resnet101": {
        "block": "bottleneck",
        "layers": (3, 4, 23, 3),
        "mid": (64, 128, 256, 512),
        "out": (256, 512, 1024, 2048),
    },
}
STEM_CHANNELS = 64


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it and at least ``divisor``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scaled(channels: int, width: float, divisor: int = DIVISOR) -> int:
    """Channels of a layer whose full-width count is ``channels`` at ``width``."""
    return make_divisible(channels * width, divisor)


def arch_spec(arch: str) -> dict:
    """The full-width table of ``arch``; a clear error for an unknown name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    return ARCHS[arch]


@dataclass(frozen=True)
class StagePlan:
    """Channels of one residual stage: bottleneck (3x3) width and block output width."""

    mid: int
    out: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class ChannelPlan:
    """Per-layer output channels of ``arch`` at ``width`` (torchvision layer names)."""

    arch: str
    width: float
    block: str
    stem: int
    stages: tuple[StagePlan, ...]
    layers: dict[str, int] = field(repr=False)

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled feature (input of the classifier)."""
        return self.stages[-1].out

    def __str__(self) -> str:
        rows = [f"{self.arch} @ {self.width:g}: stem {self.stem}"]
        for i, s in enumerate(self.stages, start=1):
            rows.append(f"  res{i + 1}: {s.blocks} x {self.block}, mid {s.mid}, out {s.out}, stride {s.stride}")
        return "\n".join(rows)


def channel_plan(arch: str, width: float, divisor: int = DIVISOR) -> ChannelPlan:
    """Per-layer channels of ``arch`` at ``width``; each layer rounds its own full-width count."""
    spec = arch_spec(arch)
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must be in (0, 1], got {width}")
    stem = scaled(STEM_CHANNELS, width, divisor)
    layers: dict[str, int] = {"conv1": stem}
    stages = []
    for i, (n, mid_full, out_full) in enumerate(zip(spec["layers"], spec["mid"], spec["out"])):
        mid, out = scaled(mid_full, width, divisor), scaled(out_full, width, divisor)
        stages.append(StagePlan(mid=mid, out=out, blocks=n, stride=1 if i == 0 else 2))
        for b in range(n):
            prefix = f"layer{i + 1}.{b}"
            if spec["block"] == "basic":
                layers[f"{prefix}.conv1"] = mid
                layers[f"{prefix}.conv2"] = out
            else:
                layers[f"{prefix}.conv1"] = mid
                layers[f"{prefix}.conv2"] = mid
                layers[f"{prefix}.conv3"] = out
        has_downsample = i > 0 or spec["block"] == "bottleneck"
        if has_downsample:
            layers[f"layer{i + 1}.0.downsample.0"] = out
    return ChannelPlan(arch, width, spec["block"], stem, tuple(stages), layers)
