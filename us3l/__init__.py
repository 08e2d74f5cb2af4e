"""us3l: universally slimmable self-supervised ResNets (no Detectron2 import here)."""

from . import models
from .calibrate import calibrate_bn
from .channels import ChannelPlan, channel_plan, make_divisible
from .checkpoint import BackboneCheckpoint, CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from .export import export_subnet
from .flops import count_params_macs
from .layers import USBatchNorm2d, USConv2d, USLinear, get_width, set_width

__all__ = [
    "BackboneCheckpoint",
    "ChannelPlan",
    "CheckpointError",
    "USBatchNorm2d",
    "USConv2d",
    "USLinear",
    "calibrate_bn",
    "channel_plan",
    "count_params_macs",
    "export_subnet",
    "file_sha256",
    "get_width",
    "load_checkpoint",
    "make_divisible",
    "models",
    "save_checkpoint",
    "set_width",
]
