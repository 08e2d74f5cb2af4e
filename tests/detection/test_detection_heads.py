"""MODEL.US3L.SCALE_HEADS: the built detector's FPN, RPN and R-CNN head channels follow the width rule and its
floors (detection.config.HEAD_FLOORS); a scaled demo COCO run trains, evaluates and resumes."""

from __future__ import annotations

import pytest

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.modeling import build_model

import us3l
from detection.config import HEAD_FLOORS, build_config, scale_heads
from detection.train import main
from us3l.jobs import read_records

SCALED = ["MODEL.US3L.SCALE_HEADS", "True"]


def head_channels(model) -> dict[str, int]:
    """Channel counts read off the built Mask R-CNN's modules."""
    box, mask = model.roi_heads.box_head, model.roi_heads.mask_head
    return {
        "fpn": model.backbone.output_shape()["p2"].channels,
        "fpn_out_conv": model.backbone.fpn_output2.out_channels,
        "rpn_conv": model.proposal_generator.rpn_head.conv.out_channels,
        "box_convs": {getattr(box, f"conv{i}").out_channels for i in range(1, 5)},
        "box_fc": box.fc1.out_features,
        "predictor_in": model.roi_heads.box_predictor.cls_score.in_features,
        "mask_convs": {getattr(mask, f"mask_fcn{i}").out_channels for i in range(1, 5)},
        "mask_deconv": mask.deconv.out_channels,
    }


def expected(fpn: int, conv: int, fc: int) -> dict[str, int]:
    return {"fpn": fpn, "fpn_out_conv": fpn, "rpn_conv": fpn, "box_convs": {conv}, "box_fc": fc,
            "predictor_in": fc, "mask_convs": {conv}, "mask_deconv": conv}


@pytest.mark.parametrize(("width", "fpn", "conv", "fc"), [(1.0, 256, 256, 1024), (0.5, 128, 128, 512),
                                                          (0.25, 64, 64, 256)])
def test_scaled_detector_channels(width, fpn, conv, fc):
    cfg = build_config("coco", arch="resnet50", width=width, opts=[*SCALED, "MODEL.RESNETS.NORM", "BN"])
    assert head_channels(build_model(cfg)) == expected(fpn, conv, fc)


def test_fixed_heads_are_the_papers_at_every_width():
    cfg = build_config("coco", arch="resnet50", width=0.25, opts=["MODEL.RESNETS.NORM", "BN"])
    assert head_channels(build_model(cfg)) == expected(256, 256, 1024)


@pytest.mark.parametrize(("width", "fpn", "conv", "fc"), [(1.0, 64, 64, 256), (0.5, 64, 48, 256),
                                                          (0.25, 64, 48, 256)])
def test_scaled_demo_detector_channels(width, fpn, conv, fc):
    # demo.yaml: FPN 64, convs 64, FC 256; the width rule alone would give 16/16/64 at 0.25
    cfg = build_config("coco", arch="resnet18", width=width, demo=True, opts=SCALED)
    assert head_channels(build_model(cfg)) == expected(fpn, conv, fc)


def test_floors():
    assert HEAD_FLOORS == {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_BOX_HEAD.CONV_DIM": 48,
                           "MODEL.ROI_BOX_HEAD.FC_DIM": 256, "MODEL.ROI_MASK_HEAD.CONV_DIM": 48}
    keys = ("MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_BOX_HEAD.FC_DIM",
            "MODEL.ROI_MASK_HEAD.CONV_DIM")

    def scaled(width, task="coco", demo=False):
        new = scale_heads(build_config(task, arch="resnet50", width=1.0, demo=demo), width)
        return tuple(new[k] for k in keys)

    # the paper's heads: the floors never bind in the US3L range (0.25-1.0) ...
    for w in (1.0, 0.75, 0.5, 0.3, 0.25):
        fpn, fc = (256 * w + 4) // 8 * 8, (1024 * w + 4) // 8 * 8
        assert scaled(w) == (fpn, fpn, fc, fpn), w
    # ... below it they do: FPN 256 * 0.2 = 51.2 -> 64, FC 1024 * 0.2 = 204.8 -> 256; at 0.1 the convs stop at 48
    assert scaled(0.2) == (64, 48, 256, 48)
    assert scaled(0.1) == (64, 48, 256, 48)
    assert scaled(0.25, demo=True) == (64, 48, 256, 48)
    # a full-width count below its floor is kept, not widened; the width rule still applies above the floor
    cfg = build_config("voc", arch="resnet18", width=1.0, demo=True)
    cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 24, 128
    assert scale_heads(cfg, 0.25)["MODEL.FPN.OUT_CHANNELS"] == 24  # 6 -> floor min(24, 64)
    assert scale_heads(cfg, 1.0)["MODEL.ROI_BOX_HEAD.FC_DIM"] == 128  # 128 < 256: kept
    cfg.MODEL.FPN.OUT_CHANNELS = 512
    assert scale_heads(cfg, 0.25)["MODEL.FPN.OUT_CHANNELS"] == 128


def test_explicit_override_is_neither_scaled_again_nor_floored():
    cfg = build_config("coco", arch="resnet50", width=0.25, opts=[*SCALED, "MODEL.FPN.OUT_CHANNELS", "96"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (96, 64, 256)
    # the order of the keys on the command line does not matter; explicit counts below the floors are kept
    cfg = build_config("coco", arch="resnet50", width=0.25, opts=["MODEL.ROI_BOX_HEAD.FC_DIM", "128", *SCALED])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (64, 128)
    cfg = build_config("voc", arch="resnet18", width=0.25, demo=True,
                       opts=[*SCALED, "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (16, 48, 64)
    cfg = build_config("voc", arch="resnet18", width=0.25, demo=True, opts=[*SCALED, "MODEL.FPN.OUT_CHANNELS", "64"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM) == (64, 48)  # same as the floor
    assert head_channels(build_model(build_config("coco", arch="resnet18", width=0.25, demo=True, opts=[
        *SCALED, "MODEL.ROI_BOX_HEAD.CONV_DIM", "16"])))["box_convs"] == {16}


def test_group_norm_heads_need_divisible_channels():
    with pytest.raises(ValueError, match="MODEL.FPN.NORM 'GN' needs MODEL.FPN.OUT_CHANNELS divisible by 32, got 80"):
        build_config("voc", arch="resnet50", width=0.3, opts=[*SCALED, "MODEL.FPN.NORM", "GN"])  # 76.8 -> 80
    cfg = build_config("voc", arch="resnet50", width=0.25, opts=[*SCALED, "MODEL.FPN.NORM", "GN",
                                                                  "MODEL.ROI_BOX_HEAD.NORM", "GN"])
    assert cfg.MODEL.FPN.OUT_CHANNELS == 64
    gn = [*SCALED, "MODEL.FPN.NORM", "GN", "MODEL.ROI_BOX_HEAD.NORM", "GN"]
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.CONV_DIM divisible by 32, got 48"):
        build_config("voc", arch="resnet18", width=0.25, demo=True, opts=gn)  # the conv floor, 48
    cfg = build_config("voc", arch="resnet18", width=0.25, demo=True, opts=[*gn, "MODEL.ROI_BOX_HEAD.CONV_DIM", "32"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM) == (64, 32)


def test_scaled_heads_train_evaluate_and_resume_on_demo_coco(tmp_path):
    ckpt = tmp_path / "backbone.pth"
    us3l.save_checkpoint(ckpt, us3l.models.us_resnet18(num_classes=0), method="test", config={}, provenance={})
    flags = ["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.25", "--demo", "--output",
             str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    opts = [*SCALED, "SOLVER.MAX_ITER", "4", "MODEL.US3L.CALIBRATION_BATCHES", "1", "TEST.PRECISE_BN.NUM_ITER", "2"]
    assert main([*flags, *opts]) == 0
    [first] = read_records(tmp_path / "res")
    assert first["spec"]["protocol"]["fpn_channels"] == 64 and {"box_AP", "mask_AP"} <= set(first["metrics"])
    assert main([*flags, "--resume", *opts]) == 0  # the same spec again: same directory, nothing left to train
    [run_dir] = (tmp_path / "det").glob("coco-demo/w0.2500-*")
    assert "training from iteration 4 to 4" in (run_dir / "log.txt").read_text()
    [again] = read_records(tmp_path / "res")
    assert again["id"] == first["id"] and again["metrics"] == first["metrics"]
