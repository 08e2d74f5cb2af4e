"""detection.cost: staged inference equals the model's own, pinned counts make MACs weight-independent."""

from __future__ import annotations

import copy

import pytest
import torch

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.modeling import build_model

from detection.config import build_config
from detection.cost import Clock, detector_params_macs, fold_batchnorm, pinned_boxes, staged_inference

BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
      "MODEL.ROI_MASK_HEAD.NORM", "BN"]


def detector(task: str = "coco", seed: int = 0, opts: tuple[str, ...] = ()) -> torch.nn.Module:
    """A demo-config R-18 detector at 0.25 with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    cfg = build_config(task, arch="resnet18", width=0.25, demo=True, opts=[*BN, *opts])
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255


def test_unpinned_stages_give_the_models_own_detections(image):
    model = detector(opts=("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))
    with torch.no_grad():
        ref = model([{"image": image}])[0]["instances"]
    clock = Clock()
    got = staged_inference(model, image, pin=False, clock=clock)
    assert len(ref) > 0 and len(got) == len(ref)
    assert torch.equal(got.pred_boxes.tensor, ref.pred_boxes.tensor) and torch.equal(got.pred_masks, ref.pred_masks)
    assert clock.laps["network"] > 0 and clock.laps["post"] > 0


def test_pinned_macs_do_not_depend_on_the_weights_and_count_the_box_head_by_hand():
    params, macs = detector_params_macs(detector(seed=0), 96, 128)
    assert detector_params_macs(detector(seed=1), 96, 128) == (params, macs)
    fewer = detector(opts=("MODEL.ROI_BOX_HEAD.NUM_CONV", "3"))
    proposals, conv = 100, 64  # demo.yaml: POST_NMS_TOPK_TEST 100, box head CONV_DIM 64 (fixed heads)
    assert macs - detector_params_macs(fewer, 96, 128)[1] == proposals * 7 * 7 * conv * conv * 9
    model = detector().train()
    detector_params_macs(model, 96, 128)
    assert model.training  # mode restored


def test_folded_batchnorm_computes_the_same_features():
    model = detector()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model.backbone(x), folded.backbone(x)
        boxes = [pinned_boxes(10, 64, 64)]
        ha = model.roi_heads.box_head(model.roi_heads.box_pooler([a[f] for f in ("p2", "p3", "p4", "p5")], boxes))
        hb = folded.roi_heads.box_head(folded.roi_heads.box_pooler([b[f] for f in ("p2", "p3", "p4", "p5")], boxes))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * a[k].abs().max().item())
    assert torch.allclose(ha, hb, rtol=1e-4, atol=1e-4 * ha.abs().max().item())


def test_pinned_boxes_are_fixed_and_inside_the_image():
    a, b = pinned_boxes(500, 80, 120), pinned_boxes(500, 80, 120)
    assert torch.equal(a.tensor, b.tensor) and len(a) == 500
    t = a.tensor
    assert (t[:, 0] >= 0).all() and (t[:, 2] <= 120).all() and (t[:, 1] >= 0).all() and (t[:, 3] <= 80).all()
    assert (t[:, 2] > t[:, 0]).all() and (t[:, 3] > t[:, 1]).all()


def test_clock_charges_its_timers_laps():
    ticks = iter([1.0, 3.0, 6.0, 6.5])
    clock = Clock(timer=lambda: next(ticks))
    clock.start()
    clock.lap("network")
    clock.lap("post")
    clock.lap("network")
    assert clock.laps == {"network": 2.5, "post": 3.0}
