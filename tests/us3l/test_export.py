import pytest
import torch
import torchvision

import us3l
from us3l.models import USResNet


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN affine terms so that a wrong channel slice would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_full_width_export_loads_strictly_into_torchvision(arch: str) -> None:
    model = USResNet(arch, num_classes=1000).eval()
    _randomise_bn(model)
    calib = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    us3l.calibrate_bn(model, 1.0, calib, num_batches=2)
    exported = us3l.export_subnet(model, 1.0)
    reference = getattr(torchvision.models, arch)()
    reference.load_state_dict(exported.state_dict(), strict=True)
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (reference(x) - model(x)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_export_matches_slimmable_model_at_width(arch: str, stem: str) -> None:
    size = 64 if stem == "imagenet" else 32
    model = USResNet(arch, stem=stem, num_classes=10).eval()
    _randomise_bn(model)
    calib = [torch.randn(4, 3, size, size) for _ in range(2)]
    x = torch.randn(2, 3, size, size)
    for width in [0.25, 0.35, 0.6, 0.875]:
        us3l.calibrate_bn(model, width, calib, num_batches=2)
        exported = us3l.export_subnet(model, width)
        assert not exported.training
        assert isinstance(exported, torchvision.models.ResNet)
        assert exported.conv1.out_channels == us3l.channel_plan(arch, width).stem
        assert exported.conv1.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
        us3l.set_width(model, width)
        with torch.no_grad():
            diff = (exported(x) - model(x)).abs().max().item()
        assert diff < 1e-5, (arch, stem, width, diff)


def test_export_keeps_bn_statistics_calibrated_at_that_width() -> None:
    model = USResNet("resnet18", num_classes=0)
    calib = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    us3l.calibrate_bn(model, 0.5, calib, num_batches=2)
    exported = us3l.export_subnet(model, 0.5)
    c = us3l.channel_plan("resnet18", 0.5).stem
    torch.testing.assert_close(exported.bn1.running_mean, model.bn1.running_mean[:c])
    assert us3l.get_width(model) == 0.5


def test_export_rejects_width_outside_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        us3l.export_subnet(USResNet("resnet18"), 0.1)
