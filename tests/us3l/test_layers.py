import pytest
import torch
from torch import nn

import us3l
from us3l.models import USResNet


def test_set_width_rejects_out_of_range_naming_it() -> None:
    m = us3l.models.us_resnet18()
    with pytest.raises(ValueError, match=r"\[0.25, 1\]"):
        us3l.set_width(m, 0.2)
    with pytest.raises(ValueError, match=r"\[0.25, 1\]"):
        us3l.set_width(m, 1.1)
    narrow = USResNet("resnet18", width_range=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        us3l.set_width(narrow, 0.25)


def test_sub_network_uses_first_channels_of_conv() -> None:
    conv = us3l.USConv2d(16, 32, 3, padding=1)
    conv.width = 0.5
    x = torch.randn(2, 8, 5, 5)
    ref = nn.functional.conv2d(x, conv.weight[:16, :8], padding=1)
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=0)


def test_first_layer_input_and_classifier_output_stay_full() -> None:
    m = us3l.models.us_resnet18(num_classes=10)
    us3l.set_width(m, 0.25)
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    assert m.conv1.active_channels() == (3, 16)
    assert m.fc.active_features() == (128, 10)


def test_bn_training_normalises_with_batch_stats_of_first_channels() -> None:
    bn = us3l.USBatchNorm2d(32)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2, 32))
        bn.bias.copy_(torch.linspace(-1, 1, 32))
    bn.width = 0.5
    x = torch.randn(4, 16, 3, 3) * 3 + 1
    ref = nn.BatchNorm2d(16)
    with torch.no_grad():
        ref.weight.copy_(bn.weight[:16])
        ref.bias.copy_(bn.bias[:16])
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean[:16], ref.running_mean)
    assert torch.all(bn.running_mean[16:] == 0)


def test_calibrate_bn_is_cumulative_average_and_restores_mode() -> None:
    m = us3l.models.us_resnet18(stem="cifar", num_classes=0)
    m.eval()
    batches = [torch.randn(4, 3, 16, 16) * (i + 1) for i in range(3)]
    us3l.calibrate_bn(m, 0.5, batches, num_batches=3)
    assert not m.training and m.bn1.momentum == 0.1
    # stem BN sees conv1's output: its running mean is the equal-weight mean of the per-batch means
    c = m.bn1.active_channels()
    with torch.no_grad():
        means = [nn.functional.conv2d(b, m.conv1.weight[:c], padding=1).mean(dim=(0, 2, 3)) for b in batches]
    torch.testing.assert_close(m.bn1.running_mean[:c], torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    assert int(m.bn1.num_batches_tracked) == 3
    assert m.conv1.weight.grad is None
    with pytest.raises(ValueError):
        us3l.calibrate_bn(m, 0.5, [], num_batches=1)


def test_torchvision_initialisation() -> None:
    m = us3l.models.us_resnet50()
    w = m.layer3[0].conv2.weight  # fan_out = 256 * 3 * 3
    assert abs(w.std().item() - (2 / (256 * 9)) ** 0.5) < 0.1 * (2 / (256 * 9)) ** 0.5
    assert torch.all(m.layer1[0].bn3.weight == 1) and torch.all(m.layer1[0].bn3.bias == 0)
