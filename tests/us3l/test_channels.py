import inspect

import pytest
import torch

import us3l
from us3l import channels


@pytest.mark.parametrize(
    ("value", "expected"),
    [(64 * 0.25, 16), (64 * 0.35, 24), (256 * 0.35, 88), (512 * 0.35, 176), (3.0, 8), (64.0, 64), (27.9, 32)],
)
def test_make_divisible_rounds_to_nearest_multiple_of_8(value: float, expected: int) -> None:
    assert us3l.make_divisible(value) == expected


def test_make_divisible_never_below_90_percent() -> None:
    for v in [x / 4 for x in range(8, 4096)]:
        r = us3l.make_divisible(v)
        assert r % 8 == 0 and r >= 8 and r >= 0.9 * v and abs(r - v) <= 8


def test_resnet50_at_035_does_not_double() -> None:
    plan = us3l.channel_plan("resnet50", 0.35)
    mids = [s.mid for s in plan.stages]
    assert mids == [24, 48, 88, 176]
    assert mids[2] != 2 * mids[1]  # 88 is not 2 * 48: stages are planned per layer
    assert [s.out for s in plan.stages] == [88, 176, 360, 720]
    assert plan.stem == 24
    assert plan.layers["layer3.2.conv2"] == 88 and plan.layers["layer4.0.downsample.0"] == 720


def test_full_width_plan_is_torchvision() -> None:
    plan = us3l.channel_plan("resnet18", 1.0)
    assert plan.stem == 64 and [s.out for s in plan.stages] == [64, 128, 256, 512]
    assert len(us3l.channel_plan("resnet101", 1.0).stages[2].blocks) == 23


def test_plan_layer_count_matches_model_convs() -> None:
    for arch in ["resnet18", "resnet34", "resnet50", "resnet101"]:
        model = us3l.models.build_model(arch)
        convs = [n for n, m in model.named_modules() if isinstance(m, us3l.USConv2d)]
        assert sorted(convs) == sorted(us3l.channel_plan(arch, 0.5).layers)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_model_built_from_plan_has_its_channels_at_every_width(arch: str, width: float) -> None:
    plan = us3l.channel_plan(arch, width)
    model = us3l.set_width(us3l.models.build_model(arch, num_classes=0), width)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, us3l.USConv2d)}
    assert {n: m.active_channels()[1] for n, m in convs.items()} == plan.layers
    for i, stage in enumerate(plan.stages, start=1):
        for b, p in enumerate(stage.blocks):
            block = getattr(model, f"layer{i}")[b]
            assert block.conv1.active_channels() == (p.cin, p.mid)
            strided = block.conv1 if plan.block == "basic" else block.conv2  # the (first) 3x3, as torchvision
            assert strided.stride == (p.stride, p.stride)
            assert (block.downsample is not None) == p.shortcut
    assert model.feature_dim == us3l.channel_plan(arch, 1.0).feature_dim
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, plan.feature_dim)


def test_shortcuts_are_structural() -> None:
    # ResNet-18's first stage keeps 64 channels at stride 1: no projection; every other first block has one.
    for arch, first in [("resnet18", False), ("resnet50", True)]:
        stages = us3l.channel_plan(arch, 0.35).stages
        assert [s.blocks[0].shortcut for s in stages] == [first, True, True, True]
        assert not any(p.shortcut for s in stages for p in s.blocks[1:])
        assert [s.stride for s in stages] == [s.blocks[0].stride for s in stages] == [1, 2, 2, 2]


def test_no_doubling_in_channel_code() -> None:
    source = inspect.getsource(channels)
    assert "* 2" not in source and "2 *" not in source and "<< 1" not in source


def test_bad_arch_and_width() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        us3l.channel_plan("resnet19", 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        us3l.channel_plan("resnet18", 1.5)
