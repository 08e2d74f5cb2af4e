"""Detectron2 transfer: slimmable backbones at any width, weight conversion, configs, training."""

from . import d2compat  # noqa: F401  (supplies detectron2._C where the install has none)
