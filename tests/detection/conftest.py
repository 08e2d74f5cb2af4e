"""Fixtures of the detection tests."""

from pathlib import Path

import pytest
import torch

import us3l


@pytest.fixture(scope="module")
def ckpt(module_dir) -> Path:
    """A random-init ImageNet-stem ResNet-18 backbone checkpoint whose config names the shapes data."""
    torch.manual_seed(0)
    path = module_dir / "ck" / "backbone.pth"
    path.parent.mkdir()
    us3l.save_checkpoint(path, us3l.models.us_resnet18(num_classes=0), method="test",
                         config={"data": {"dataset": "shapes"}}, provenance={})
    return path
