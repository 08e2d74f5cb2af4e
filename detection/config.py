"""Our Detectron2 configs (this install ships no model-zoo files) and the ``MODEL.US3L`` keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.config import CfgNode, get_cfg

from detection.backbone import GN_GROUPS
from us3l.channels import make_divisible
from us3l.device import precision_name
from us3l.errors import UsageError

CONFIG_DIR = Path(__file__).parent / "configs"
TASK_CONFIGS = {"voc": "voc_faster_rcnn_R50_FPN.yaml", "coco": "coco_mask_rcnn_R50_FPN_1x.yaml"}
DEMO_CONFIG = "demo.yaml"
DEMO_DATASETS = {"voc": ("shapes_voc_train", "shapes_voc_test"), "coco": ("shapes_coco_train", "shapes_coco_test")}


def add_us3l_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.US3L``: arch and width of the slimmable backbone, head scaling, BN calibration."""
    cfg.MODEL.US3L = CfgNode()
    cfg.MODEL.US3L.ARCH = "resnet50"
    cfg.MODEL.US3L.WIDTH = 1.0
    # Off (default) = the paper's setting: FPN and heads keep their full channel counts (256-channel FPN
    # and 4conv1fc box head) at every width. On: they follow the backbone's width rule (see scale_heads).
    cfg.MODEL.US3L.SCALE_HEADS = False
    # BatchNorm calibration of the exported backbone at the width, on training images.
    cfg.MODEL.US3L.CALIBRATION_BATCHES = 50
    cfg.MODEL.US3L.CALIBRATION_BATCH_SIZE = 32
    # Iterations between metrics.json lines, and the window their losses are smoothed over (Detectron2's
    # LazyConfig ``train.log_period``; its yacs trainer hard-codes 20). 1 writes every iteration's losses.
    cfg.SOLVER.LOG_PERIOD = 20
    # Periodic checkpoints kept on disk (the newest ones; model_final.pth is always kept besides).
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 2
    return cfg


# Channel counts of the FPN and R-CNN heads that SCALE_HEADS derives from the width, with the floor each
# never goes below. The RPN head has no key of its own: its 3x3 conv keeps the FPN's channels, so it shrinks
# with MODEL.FPN.OUT_CHANNELS. The FPN/RPN floor (64) and the box FC floor (256) are what the paper's heads
# (FPN 256, FC 1024) have at 0.25, the smallest width of the US3L range, so they never bind on the paper's
# configs at widths >= 0.25; the box and mask convolutions, the bulk of the heads' MACs (4 convs on every
# RoI), may go down to 48 (32 lost 12-17% of the demo AP and a third of its mask AP; 48 kept it). They keep an
# already narrow config (demo.yaml: FPN 64, convs 64, FC 256) from collapsing to 16/16/64 at 0.25, which lost
# half the demo AP (docs/benchmarks.md, "Demo AP at 0.25"). 48 is not a multiple of GroupNorm's 32 groups: GN
# heads at the floor are refused by check_head_norms (name the count explicitly, e.g. 32 or 64).
# A config value below its floor is kept as it is (the floor never widens a head).
HEAD_FLOORS = {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_BOX_HEAD.CONV_DIM": 48, "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
               "MODEL.ROI_MASK_HEAD.CONV_DIM": 48}


def config_value(cfg: CfgNode, key: str) -> Any:
    """The value at dotted ``key`` (``MODEL.FPN.OUT_CHANNELS``) of ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: CfgNode, key: str, value) -> None:
    *path, last = key.split(".")
    config_value(cfg, ".".join(path))[last] = value


def merge_overrides(cfg: CfgNode, opts: list[str] | tuple[str, ...], what: str) -> None:
    """Merge KEY VALUE ``opts`` into ``cfg``; a key the config lacks or a value of another type (yacs' errors) is
    a ``UsageError`` that starts with ``what``."""
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise UsageError(f"{what}: {e}") from None


def scale_heads(cfg: CfgNode, width: float, explicit: tuple[str, ...] | set[str] = ()) -> dict[str, int]:
    """Scale the FPN and R-CNN head channels (``HEAD_FLOORS`` keys) to ``width`` in place; returns the new values.

    Each count C (the config file's value at full width) becomes ``max(make_divisible(C * width),
    min(C, HEAD_FLOORS[key]))``: the rule the backbone's layers follow (the nearest multiple of 8, never
    below 90% of ``C * width``, at least 8), then the key's floor (64 channels for the FPN/RPN, 48 for the
    box/mask convolutions, 256 for the box head's FC) unless C itself is smaller. On the paper's configs the
    floors change nothing at widths >= 0.25 (FPN/convs 64, FC 256 there); below 0.25 the FPN stays at 64 and
    the FC at 256.
    Keys in ``explicit`` (given on the command line) are taken as they are: an explicit channel count is
    the count wanted at this width and is neither scaled again nor floored.
    """
    out = {}
    for key, floor in HEAD_FLOORS.items():
        if key not in explicit:
            full = config_value(cfg, key)
            _set(cfg, key, max(make_divisible(full * width), min(full, floor)))
        out[key] = config_value(cfg, key)
    return out


def check_head_norms(cfg: CfgNode) -> None:
    """GroupNorm in the FPN or the R-CNN heads needs channel counts divisible by its 32 groups."""
    for norm_key, dim_key in (("MODEL.FPN.NORM", "MODEL.FPN.OUT_CHANNELS"),
                              ("MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_BOX_HEAD.CONV_DIM"),
                              ("MODEL.ROI_MASK_HEAD.NORM", "MODEL.ROI_MASK_HEAD.CONV_DIM")):
        dim = config_value(cfg, dim_key)
        if config_value(cfg, norm_key) == "GN" and dim % GN_GROUPS:
            raise UsageError(f"{norm_key} 'GN' needs {dim_key} divisible by {GN_GROUPS}, got {dim} "
                             f"at width {cfg.MODEL.US3L.WIDTH:g}; use 'BN', 'SyncBN' or set {dim_key} explicitly")


def build_config(task: str, *, arch: str, width: float, demo: bool = False, opts: list[str] | None = None,
                 device: str = "cpu", pixel: tuple[list[float], list[float]] | None = None) -> CfgNode:
    """The config of ``task`` ("voc" or "coco") for ``arch`` at ``width``; ``opts`` are KEY VALUE overrides.

    ``pixel`` is (PIXEL_MEAN, PIXEL_STD) of the pretraining data (before ``opts``, which may override it).
    ``--demo`` merges ``demo.yaml`` and switches the datasets to the procedural demo sets.
    ``SOLVER.AMP.ENABLED`` (on in the task configs, off in the demo schedule) means float16 autocast with a
    GradScaler on CUDA and bfloat16 autocast on CPU (see :func:`precision`). The config is not frozen.
    """
    if task not in TASK_CONFIGS:
        raise UsageError(f"unknown task {task!r}; expected one of {sorted(TASK_CONFIGS)}")
    cfg = add_us3l_config(get_cfg())
    cfg.merge_from_file(str(CONFIG_DIR / TASK_CONFIGS[task]))
    if demo:
        cfg.merge_from_file(str(CONFIG_DIR / DEMO_CONFIG))
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (DEMO_DATASETS[task][0],), (DEMO_DATASETS[task][1],)
    cfg.MODEL.US3L.ARCH = arch
    cfg.MODEL.US3L.WIDTH = float(width)
    cfg.MODEL.DEVICE = device
    if pixel is not None:
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(pixel[0]), list(pixel[1])
    if opts:
        if len(opts) % 2:
            raise UsageError(f"overrides must be KEY VALUE pairs, got an odd number: {opts}")
        merge_overrides(cfg, opts, "config override")
    if float(cfg.MODEL.US3L.WIDTH) != float(width):
        raise UsageError("set the width with --width, not MODEL.US3L.WIDTH")
    if cfg.MODEL.US3L.SCALE_HEADS:
        scale_heads(cfg, float(width), explicit=set((opts or [])[0::2]))
    check_head_norms(cfg)
    if cfg.SOLVER.LOG_PERIOD < 1:
        raise UsageError(f"SOLVER.LOG_PERIOD must be >= 1, got {cfg.SOLVER.LOG_PERIOD}")
    if cfg.SOLVER.CHECKPOINTS_TO_KEEP < 1:
        raise UsageError(f"SOLVER.CHECKPOINTS_TO_KEEP must be >= 1, got {cfg.SOLVER.CHECKPOINTS_TO_KEEP}")
    return cfg


def precision(cfg: CfgNode) -> str:
    """The arithmetic ``cfg`` trains in: ``float32``, ``amp-float16`` (CUDA) or ``amp-bfloat16`` (CPU)."""
    return precision_name(torch.device(cfg.MODEL.DEVICE).type, bool(cfg.SOLVER.AMP.ENABLED))
