"""Detectron2 transfer: slimmable backbones at any width, weight conversion, configs, training."""
