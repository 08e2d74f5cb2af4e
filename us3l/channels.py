"""The ResNet structure and the width rule: every layer of a slimmable ResNet at width ``w``.

This module is the one description of the architectures: :data:`ARCHS` holds each ResNet's block
kind and blocks per stage, with the stem, stage channels and strides they share, and
:func:`channel_plan` expands it at a width into every block and layer. The slimmable model
(:class:`us3l.models.USResNet`, from the full-width plan) and the Detectron2 backbone
(``detection.backbone.resnet_from_plan``) are both built from a plan.

Every layer rounds its *own* full-width channel count (``make_divisible(C_max * w, 8)``), so
stages at an arbitrary width do not double cleanly (ResNet-50 at 0.35: bottlenecks 24/48/88/176).
Nothing here derives a stage's channels from the previous stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import UsageError

DIVISOR = 8
WIDTH_TOLERANCE = 1e-9  # a width written out to 9 digits (0.333333333) is in a range ending at 1/3


class WidthError(UsageError):
    """A width or width range that the model, checkpoint or job does not support (one line naming the range)."""


def check_width(width: object, lo: float | None = None, hi: float | None = None, of: str = "") -> float:
    """``width`` as a float: a number in (0, 1], and in ``[lo, hi]`` when given (``of``: whose range, for the
    message); else :class:`WidthError`. The one check of a width, wherever one comes in."""
    ok = isinstance(width, (int, float, str)) and not isinstance(width, bool)
    try:
        w = float(width) if ok else math.nan
    except ValueError:
        w = math.nan
    if lo is not None and hi is not None:  # a range within (0, 1]
        if not lo - WIDTH_TOLERANCE <= w <= hi + WIDTH_TOLERANCE:  # NaN too
            shown = repr(width) if math.isnan(w) else f"{w:g}"
            raise WidthError(f"width {shown} is outside the range [{lo:g}, {hi:g}]{of}; pick a width in it")
    elif not 0.0 < w <= 1.0:  # NaN too
        raise WidthError(f"width must be a number in (0, 1], got {width!r}")
    return w


def check_width_range(lo: float, hi: float, *, what: str = "width range") -> tuple[float, float]:
    """``(lo, hi)`` as floats with 0 < lo <= hi <= 1, else :class:`WidthError` naming ``what``."""
    if not 0.0 < lo <= hi <= 1.0:
        raise WidthError(f"{what} [{lo:g}, {hi:g}] must lie in (0, 1] with min <= max, e.g. [0.25, 1.0]")
    return float(lo), float(hi)
STEM_CHANNELS = 64
STAGE_MID = (64, 128, 256, 512)  # bottleneck (3x3) channels of res2..res5, torchvision's ``planes``
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = {"basic": 1, "bottleneck": 4}  # block output = expansion x bottleneck channels


@dataclass(frozen=True)
class ArchSpec:
    """A full-width ResNet: block kind, blocks per stage, stem and per-stage channels and strides."""

    block: str
    depths: tuple[int, ...]
    stem: int = STEM_CHANNELS
    mid: tuple[int, ...] = STAGE_MID
    strides: tuple[int, ...] = STAGE_STRIDES

    @property
    def out(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        return tuple(m * EXPANSION[self.block] for m in self.mid)


# torchvision's resnet18/34/50/101 (``torchvision.models.resnet``).
ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec("basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec("bottleneck", (3, 4, 23, 3)),
}


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it and at least ``divisor``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scaled(channels: int, width: float, divisor: int = DIVISOR) -> int:
    """Channels of a layer whose full-width count is ``channels`` at ``width``."""
    return make_divisible(channels * width, divisor)


def arch_spec(arch: str) -> ArchSpec:
    """The full-width description of ``arch``; a clear error for an unknown name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    return ARCHS[arch]


@dataclass(frozen=True)
class BlockPlan:
    """One residual block: input, bottleneck (3x3) and output channels, stride and projection shortcut.

    ``shortcut`` is structural (a 1x1 projection where the full-width block changes stride or channels,
    as torchvision), so a block keeps it at every width.
    """

    cin: int
    mid: int
    out: int
    stride: int
    shortcut: bool


@dataclass(frozen=True)
class StagePlan:
    """One residual stage: bottleneck and output channels, stride of its first block, its blocks."""

    mid: int
    out: int
    stride: int
    blocks: tuple[BlockPlan, ...]


@dataclass(frozen=True)
class ChannelPlan:
    """Every block and per-layer output channels of ``arch`` at ``width`` (torchvision layer names)."""

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
        for i, s in enumerate(self.stages, start=2):
            rows.append(f"  res{i}: {len(s.blocks)} x {self.block}, mid {s.mid}, out {s.out}, stride {s.stride}")
        return "\n".join(rows)


def _stage(spec: ArchSpec, i: int, cin_full: int, width: float, divisor: int) -> StagePlan:
    """Stage ``i`` of ``spec`` at ``width``, whose input has ``cin_full`` channels at full width."""
    mid_full, out_full, stride = spec.mid[i], spec.out[i], spec.strides[i]
    mid, out = scaled(mid_full, width, divisor), scaled(out_full, width, divisor)
    first = BlockPlan(scaled(cin_full, width, divisor), mid, out, stride,
                      shortcut=stride != 1 or cin_full != out_full)
    rest = BlockPlan(out, mid, out, 1, shortcut=False)
    return StagePlan(mid, out, stride, (first,) + (rest,) * (spec.depths[i] - 1))


def _layers(block: str, stem: int, stages: tuple[StagePlan, ...]) -> dict[str, int]:
    """Output channels of every conv by torchvision name (a stage's shortcuts after its blocks)."""
    layers = {"conv1": stem}
    for i, stage in enumerate(stages, start=1):
        for b, p in enumerate(stage.blocks):
            convs = (p.mid, p.out) if block == "basic" else (p.mid, p.mid, p.out)
            for k, c in enumerate(convs, start=1):
                layers[f"layer{i}.{b}.conv{k}"] = c
        layers.update({f"layer{i}.{b}.downsample.0": p.out for b, p in enumerate(stage.blocks) if p.shortcut})
    return layers


def channel_plan(arch: str, width: float, divisor: int = DIVISOR) -> ChannelPlan:
    """``arch`` at ``width``: every block and layer, each rounding its own full-width count."""
    spec = arch_spec(arch)
    check_width(width)
    stages = []
    cin_full = spec.stem
    for i in range(len(spec.depths)):
        stages.append(_stage(spec, i, cin_full, width, divisor))
        cin_full = spec.out[i]
    stem = scaled(spec.stem, width, divisor)
    return ChannelPlan(arch, width, spec.block, stem, tuple(stages), _layers(spec.block, stem, tuple(stages)))
