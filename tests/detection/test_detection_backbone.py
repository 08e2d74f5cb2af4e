"""Detectron2 backbone at any width and exact weight transfer from a slimmable checkpoint."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.layers import ShapeSpec

import us3l
from detection.backbone import build_us3l_resnet_backbone, build_us3l_resnet_fpn_backbone, resnet_from_plan
from detection.config import build_config
from detection.convert import (
    WeightsError,
    calibration_batches,
    check_weights_fit,
    convert,
    d2_name,
    image_files,
    load_backbone_weights,
    main,
    read_weights,
)
from us3l.channels import channel_plan

WIDTHS = (1.0, 0.6, 0.35, 0.25)


@pytest.fixture(scope="module")
def image_dir(module_dir):
    root = module_dir / "calib"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        arr = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / f"img{i}.jpg")
    return root


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def checkpoint(request, module_dir):
    torch.manual_seed(0)
    model = us3l.models.build_model(request.param, num_classes=0)
    path = module_dir / f"{request.param}.pth"
    us3l.save_checkpoint(path, model, method="test", config={"data": {"dataset": "imagenet"}}, provenance={})
    return us3l.load_checkpoint(path)


def tv_stages(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage outputs of a torchvision ResNet."""
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for i in range(1, 5):
        y = getattr(net, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_converted_backbone_equals_export(checkpoint, image_dir, tmp_path, width):
    files = image_files(image_dir)
    batches = calibration_batches(files, num_batches=2, batch_size=3, size=32,
                                  pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    pkl = convert(checkpoint, width, tmp_path / "w.pkl", batches=batches, num_batches=2)
    data = read_weights(pkl)
    check_weights_fit(data, checkpoint.arch, width, pkl)

    cfg = build_config("voc", arch=checkpoint.arch, width=width)
    cfg.MODEL.RESNETS.NORM = "BN"
    d2 = build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert load_backbone_weights(d2, data, pkl) == ""
    d2.eval()

    # Independent reference: the same calibration through the slimmable model, then export.
    model = checkpoint.build_model()
    again = calibration_batches(files, num_batches=2, batch_size=3, size=32,
                                pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    us3l.calibrate_bn(model, width, again, 2)
    model.eval()
    exported = us3l.export_subnet(model, width).eval()

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours, ref, slim = d2(x), tv_stages(exported, x), model.forward_stages(x)
    plan = channel_plan(checkpoint.arch, width)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert ours[name].shape[1] == plan.stages[i].out
        assert (ours[name] - ref[name]).abs().max().item() < 1e-4
        assert (ours[name] - slim[name]).abs().max().item() < 1e-4


def test_channels_follow_plan_not_doubling():
    # ResNet-50 at 0.35: bottlenecks 24/48/88/176 (88 is not 2 x 48).
    cfg = build_config("voc", arch="resnet50", width=0.35)
    net = build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3))
    mids = [getattr(net, f"res{i}")[0].conv2.weight.shape[0] for i in range(2, 6)]
    assert mids == [24, 48, 88, 176]
    assert net.output_shape()["res5"].channels == channel_plan("resnet50", 0.35).stages[3].out
    assert net.res3[0].conv1.stride == (1, 1) and net.res3[0].conv2.stride == (2, 2)  # torchvision-style


@pytest.mark.parametrize(("arch", "width"), [("resnet18", 0.25), ("resnet50", 0.35)])
def test_blocks_and_shortcuts_follow_plan(arch, width):
    plan = channel_plan(arch, width)
    net = resnet_from_plan(plan)
    assert net.stem.conv1.weight.shape[0] == plan.stem
    for i, stage in enumerate(plan.stages, start=2):
        blocks = getattr(net, f"res{i}")
        assert len(blocks) == len(stage.blocks)
        for block, p in zip(blocks, stage.blocks):
            assert (block.in_channels, block.out_channels, block.stride) == (p.cin, p.out, p.stride)
            assert (block.shortcut is not None) == p.shortcut


def test_shortcut_lost_to_rounding_is_a_clear_error():
    # ResNet-50 at 0.02: stem and res2 both round to 8 channels, so Detectron2 would drop res2.0's projection.
    with pytest.raises(ValueError, match=r"res2\.0: .* projection shortcut but 8 -> 8"):
        resnet_from_plan(channel_plan("resnet50", 0.02))


def test_fpn_on_top_and_scaled_heads():
    cfg = build_config("coco", arch="resnet18", width=0.5)
    fpn = build_us3l_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    out = fpn(torch.randn(1, 3, 64, 64))
    assert sorted(out) == ["p2", "p3", "p4", "p5", "p6"] and out["p2"].shape[1] == 256
    cfg = build_config("coco", arch="resnet18", width=0.5, opts=["MODEL.US3L.SCALE_HEADS", "True"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (128, 512)


def test_group_norm_that_cannot_divide_is_a_config_error():
    cfg = build_config("voc", arch="resnet50", width=0.35, opts=["MODEL.RESNETS.NORM", "GN"])
    with pytest.raises(ValueError, match="divisible by 32.*width 0.35"):
        build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3))
    resnet_from_plan(channel_plan("resnet50", 0.5), norm="GN")  # 32/64/128/256: fine


def test_torchvision_to_detectron2_names():
    assert d2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert d2_name("layer1.0.bn3.weight") == "res2.0.conv3.norm.weight"
    assert d2_name("layer3.0.downsample.1.bias") == "res4.0.shortcut.norm.bias"
    assert d2_name("layer4.1.conv2.weight") == "res5.1.conv2.weight"


def test_strict_loading_fails_on_width_and_shape_mismatch(tmp_path):
    model = us3l.models.us_resnet18(num_classes=0)
    us3l.save_checkpoint(tmp_path / "ck.pth", model, method="test", config={}, provenance={})
    ck = us3l.load_checkpoint(tmp_path / "ck.pth")
    pkl = convert(ck, 0.5, tmp_path / "w05.pkl")
    data = read_weights(pkl)
    with pytest.raises(WeightsError, match="converted at width 0.5.*width is 0.25"):
        check_weights_fit(data, "resnet18", 0.25, pkl)
    cfg = build_config("voc", arch="resnet18", width=0.25)
    narrow = build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3))
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_backbone_weights(narrow, data, pkl)
    del data["model"]["res5.1.conv2.weight"]
    cfg = build_config("voc", arch="resnet18", width=0.5)
    with pytest.raises(WeightsError, match="1 missing .*res5.1.conv2.weight"):
        load_backbone_weights(build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3)), data, pkl)
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"model": {}, "__author__": "someone"}))
    with pytest.raises(WeightsError, match="not a us3l backbone weight file"):
        read_weights(tmp_path / "other.pkl")


def test_convert_cli(tmp_path, image_dir, capsys):
    us3l.save_checkpoint(tmp_path / "ck.pth", us3l.models.us_resnet18(num_classes=0), method="test",
                         config={}, provenance={})
    out = tmp_path / "w.pkl"
    assert main([str(tmp_path / "ck.pth"), "--width", "0.25", "-o", str(out), "--calibration-images",
                 str(image_dir), "--calibration-batches", "1", "--batch-size", "2", "--size", "32"]) == 0
    meta = read_weights(out)["us3l"]
    assert meta["width"] == 0.25 and meta["calibration"]["num_batches"] == 1
    assert main([str(tmp_path / "ck.pth"), "--width", "0.1", "-o", str(out), "--calibration-batches", "0"]) == 2
    assert "outside the range [0.25, 1]" in capsys.readouterr().err
    assert main([str(out), "--width", "0.5", "-o", str(tmp_path / "x.pkl"), "--calibration-batches", "0"]) == 2
    assert "expected a us3l backbone checkpoint" in capsys.readouterr().err


def test_configs_follow_reference_world_size_rule():
    from detectron2.engine import DefaultTrainer

    voc = build_config("voc", arch="resnet50", width=1.0)
    assert (voc.SOLVER.IMS_PER_BATCH, voc.SOLVER.BASE_LR, voc.SOLVER.MAX_ITER) == (16, 0.02, 24000)
    assert voc.INPUT.MIN_SIZE_TRAIN == (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    assert voc.MODEL.RESNETS.NORM == voc.MODEL.FPN.NORM == voc.MODEL.ROI_BOX_HEAD.NORM == "SyncBN"
    one_gpu = DefaultTrainer.auto_scale_workers(voc, 1)
    assert (one_gpu.SOLVER.IMS_PER_BATCH, one_gpu.SOLVER.BASE_LR, one_gpu.SOLVER.MAX_ITER) == (2, 0.0025, 192000)
    assert one_gpu.SOLVER.STEPS == (144000, 176000)
    coco = build_config("coco", arch="resnet50", width=1.0)
    assert coco.MODEL.MASK_ON and (coco.SOLVER.MAX_ITER, coco.SOLVER.STEPS) == (90000, (60000, 80000))


@pytest.mark.parametrize("norm", ["FrozenBN", "SyncBN"])
def test_other_norms_load_strictly_and_match(tmp_path, norm):
    torch.manual_seed(1)
    model = us3l.models.us_resnet18(num_classes=0)
    us3l.save_checkpoint(tmp_path / "ck.pth", model, method="test", config={}, provenance={})
    ck = us3l.load_checkpoint(tmp_path / "ck.pth")
    data = read_weights(convert(ck, 0.35, tmp_path / "w.pkl"))
    cfg = build_config("voc", arch="resnet18", width=0.35, opts=["MODEL.RESNETS.NORM", norm])
    d2 = build_us3l_resnet_backbone(cfg, ShapeSpec(channels=3))
    load_backbone_weights(d2, data)
    exported = us3l.export_subnet(ck.build_model().eval(), 0.35).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (d2.eval()(x)["res5"] - tv_stages(exported, x)["res5"]).abs().max().item()
    assert diff < 1e-4
