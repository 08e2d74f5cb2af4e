"""Detectron2 backbones for a slimmable ResNet at any width.

``build_us3l_resnet_backbone`` builds ResNet-18/34/50/101 from Detectron2's own stem and block
classes with every block (channels, stride, shortcut) taken from ``us3l.channel_plan(arch, MODEL.US3L.WIDTH)``
(channels never by doubling) and the stride in the 3x3 conv, as torchvision does; parameter names are Detectron2's
(``stem.conv1``, ``res2.0.conv1.norm``, ``res3.0.shortcut`` ...). ``build_us3l_resnet_fpn_backbone``
puts Detectron2's FPN on top.
"""

from __future__ import annotations

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

from us3l.channels import BlockPlan, ChannelPlan, channel_plan

GN_GROUPS = 32  # Detectron2's get_norm("GN", C) is GroupNorm(32, C)


def check_norm(norm: str, channels: dict[str, int], what: str) -> None:
    """GroupNorm needs every channel count divisible by 32: a clear config error otherwise."""
    if norm != "GN":
        return
    bad = {k: c for k, c in channels.items() if c % GN_GROUPS}
    if bad:
        name, c = next(iter(bad.items()))
        raise ValueError(
            f"norm 'GN' needs channels divisible by {GN_GROUPS}, but {what} has {c} channels at {name} "
            f"({len(bad)} layers affected); use MODEL.RESNETS.NORM/MODEL.FPN.NORM 'BN', 'SyncBN' or 'FrozenBN' "
            "at this width"
        )


def _block(p: BlockPlan, kind: str, norm: str, name: str) -> CNNBlockBase:
    """Detectron2's block for ``p``; it has a projection shortcut exactly when channels change."""
    if p.shortcut != (p.cin != p.out):
        raise ValueError(f"{name}: the slimmable block has {'a' if p.shortcut else 'no'} projection shortcut "
                         f"but {p.cin} -> {p.out} channels at this width; use a larger width")
    if kind == "basic":
        return BasicBlock(p.cin, p.out, stride=p.stride, norm=norm)
    return BottleneckBlock(p.cin, p.out, bottleneck_channels=p.mid, stride=p.stride, norm=norm,
                           stride_in_1x1=False)


def resnet_from_plan(plan: ChannelPlan, norm: str = "BN", in_channels: int = 3,
                     out_features: list[str] | None = None, freeze_at: int = 0) -> ResNet:
    """A Detectron2 ``ResNet`` whose blocks and channels follow ``plan`` exactly (all stages by default)."""
    check_norm(norm, plan.layers, f"{plan.arch} at width {plan.width:g}")
    stem = BasicStem(in_channels=in_channels, out_channels=plan.stem, norm=norm)
    stages = [[_block(p, plan.block, norm, f"res{i}.{b}") for b, p in enumerate(stage.blocks)]
              for i, stage in enumerate(plan.stages, start=2)]
    names = [f"res{i}" for i in range(2, len(stages) + 2)]
    return ResNet(stem, stages, out_features=out_features or names, freeze_at=freeze_at)


def plan_from_cfg(cfg: CfgNode) -> ChannelPlan:
    """The channel plan of ``MODEL.US3L.ARCH`` at ``MODEL.US3L.WIDTH``."""
    return channel_plan(cfg.MODEL.US3L.ARCH, float(cfg.MODEL.US3L.WIDTH))


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """Slimmable ResNet at ``MODEL.US3L.WIDTH`` (norm ``MODEL.RESNETS.NORM``)."""
    return resnet_from_plan(plan_from_cfg(cfg), norm=cfg.MODEL.RESNETS.NORM, in_channels=input_shape.channels,
                            out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
                            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN (``MODEL.FPN.OUT_CHANNELS``) on the slimmable ResNet at ``MODEL.US3L.WIDTH``."""
    bottom_up = build_us3l_resnet_backbone(cfg, input_shape)
    check_norm(cfg.MODEL.FPN.NORM, {"fpn": cfg.MODEL.FPN.OUT_CHANNELS}, "the FPN")
    return FPN(bottom_up=bottom_up, in_features=list(cfg.MODEL.FPN.IN_FEATURES),
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
