"""MODEL.US3L.SCALE_HEADS: the built detector's FPN, RPN and R-CNN head channels follow the width rule; a scaled
demo COCO run trains, evaluates and resumes."""

from __future__ import annotations

import pytest

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.modeling import build_model

import us3l
from detection.config import build_config, scale_heads
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


def test_explicit_override_is_not_scaled_again():
    cfg = build_config("coco", arch="resnet50", width=0.25, opts=[*SCALED, "MODEL.FPN.OUT_CHANNELS", "96"])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (96, 64, 256)
    # the order of the keys on the command line does not matter
    cfg = build_config("coco", arch="resnet50", width=0.25, opts=["MODEL.ROI_BOX_HEAD.FC_DIM", "128", *SCALED])
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (64, 128)


def test_demo_config_is_scaled_from_its_own_values_with_a_floor():
    cfg = build_config("voc", arch="resnet18", width=0.25, demo=True, opts=SCALED)  # demo: FPN 64, FC 256
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (16, 16, 64)
    cfg.MODEL.FPN.OUT_CHANNELS = 24
    assert scale_heads(cfg, 0.25)["MODEL.FPN.OUT_CHANNELS"] == 8  # 6 -> never below 8
    assert scale_heads(cfg, 0.55)["MODEL.FPN.OUT_CHANNELS"] == 8  # 4.4 -> 8, not 0


def test_group_norm_heads_need_divisible_channels():
    with pytest.raises(ValueError, match="MODEL.FPN.NORM 'GN' needs MODEL.FPN.OUT_CHANNELS divisible by 32, got 16"):
        build_config("voc", arch="resnet18", width=0.25, demo=True, opts=[*SCALED, "MODEL.FPN.NORM", "GN"])
    cfg = build_config("voc", arch="resnet50", width=0.25, opts=[*SCALED, "MODEL.FPN.NORM", "GN",
                                                                  "MODEL.ROI_BOX_HEAD.NORM", "GN"])
    assert cfg.MODEL.FPN.OUT_CHANNELS == 64


def test_scaled_heads_train_evaluate_and_resume_on_demo_coco(tmp_path):
    ckpt = tmp_path / "backbone.pth"
    us3l.save_checkpoint(ckpt, us3l.models.us_resnet18(num_classes=0), method="test", config={}, provenance={})
    flags = ["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.25", "--demo", "--output",
             str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    opts = [*SCALED, "SOLVER.MAX_ITER", "4", "MODEL.US3L.CALIBRATION_BATCHES", "1", "TEST.PRECISE_BN.NUM_ITER", "2"]
    assert main([*flags, *opts]) == 0
    [first] = read_records(tmp_path / "res")
    assert first["spec"]["protocol"]["fpn_channels"] == 16 and {"box_AP", "mask_AP"} <= set(first["metrics"])
    assert main([*flags, "--resume", *opts]) == 0  # the same spec again: same directory, nothing left to train
    [run_dir] = (tmp_path / "det").glob("coco-demo/w0.2500-*")
    assert "training from iteration 4 to 4" in (run_dir / "log.txt").read_text()
    [again] = read_records(tmp_path / "res")
    assert again["id"] == first["id"] and again["metrics"] == first["metrics"]
