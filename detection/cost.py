"""What a whole R-CNN detector costs at inference: parameters, MACs and latency with the data-dependent work pinned.

A detector's work depends on its scores: how many proposals survive the RPN's NMS decides how often the box
head runs, how many detections survive decides how often the mask head runs, and with untrained weights
both swing from one build to the next. :func:`staged_inference` runs the model's own modules stage by
stage and can *pin* those counts: the box head then runs on exactly ``POST_NMS_TOPK_TEST`` proposals and the
mask head on exactly ``DETECTIONS_PER_IMAGE`` boxes, fixed pseudo-random boxes shared by every model of an
image size. The network (backbone, FPN, RPN head, RoI pooling, box and mask heads) is then the same work for
any weights; the post-processing (anchor decoding, top-k and NMS of proposals, box decoding and per-class
NMS, mask pasting) is timed apart, since its cost follows the scores and not the width.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.layers import Conv2d
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances


@dataclass
class Clock:
    """Time split into ``network`` and ``post`` (post-processing); ``sync`` waits for the device.

    ``timer`` is wall time by default; ``time.thread_time`` (the calling thread's CPU time) measures a
    one-thread CPU run without the time other processes take from it on a shared machine.
    """

    sync: Callable[[], None] = lambda: None
    timer: Callable[[], float] = time.perf_counter
    laps: dict[str, float] = field(default_factory=lambda: {"network": 0.0, "post": 0.0})
    _last: float = 0.0

    def start(self) -> None:
        self.sync()
        self._last = self.timer()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap to ``stage``."""
        self.sync()
        now = self.timer()
        self.laps[stage] += now - self._last
        self._last = now


def pinned_boxes(n: int, height: int, width: int, seed: int = 0) -> Boxes:
    """``n`` fixed pseudo-random boxes inside a ``height`` x ``width`` image: log-uniform sides from 16 px to
    the image's short side, aspect ratios 1/2 to 2 (the spread of anchors and objects), uniform centres."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(n).uniform_(0, 1, generator=g) * torch.log(torch.tensor(min(height, width) / 16))) * 16
    aspect = torch.exp(torch.empty(n).uniform_(-1, 1, generator=g) * torch.log(torch.tensor(2.0)))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(n, generator=g) * width, torch.rand(n, generator=g) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    out = Boxes(boxes)
    out.clip((height, width))
    return out


def _rpn_proposals(model: GeneralizedRCNN, images, features: dict[str, torch.Tensor],
                   clock: Clock) -> list[Instances]:
    """The RPN of ``model``, its head charged to the network and its proposal selection to post-processing."""
    rpn = model.proposal_generator
    feats = [features[f] for f in rpn.in_features]
    logits, deltas = rpn.rpn_head(feats)
    clock.lap("network")
    anchors = rpn.anchor_generator(feats)
    logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
    box_dim = rpn.anchor_generator.box_dim
    deltas = [d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
              for d in deltas]
    return rpn.predict_proposals(anchors, logits, deltas, images.image_sizes)


@torch.inference_mode()
def staged_inference(model: GeneralizedRCNN, image: torch.Tensor, *, pin: bool = True,
                     clock: Clock | None = None) -> Instances:
    """``model``'s inference on one CHW image (0-255, at its test size), stage by stage, timed into ``clock``.

    ``pin=False`` gives exactly ``model([{"image": image}])``'s instances; ``pin=True`` runs the box head on
    ``POST_NMS_TOPK_TEST`` and the mask head on ``DETECTIONS_PER_IMAGE`` :func:`pinned_boxes` instead of the
    RPN's proposals and the box head's detections (which are then only post-processed).
    """
    clock = clock or Clock()
    roi = model.roi_heads
    height, width = image.shape[-2:]
    clock.start()
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    clock.lap("network")
    proposals = _rpn_proposals(model, images, features, clock)
    clock.lap("post")
    if pin:
        size = images.image_sizes[0]
        topk = model.proposal_generator.post_nms_topk[False]
        proposals = [Instances(size, proposal_boxes=pinned_boxes(topk, *size).to(images.tensor.device))]
    box_features = roi.box_head(roi.box_pooler([features[f] for f in roi.box_in_features],
                                               [p.proposal_boxes for p in proposals]))
    predictions = roi.box_predictor(box_features)
    clock.lap("network")
    instances, _ = roi.box_predictor.inference(predictions, proposals)
    clock.lap("post")
    if roi.mask_on:
        if pin:
            size = images.image_sizes[0]
            n = roi.box_predictor.test_topk_per_image
            boxes = pinned_boxes(n, *size, seed=1).to(images.tensor.device)
            instances = [Instances(size, pred_boxes=boxes, scores=torch.ones(n, device=boxes.device),
                                   pred_classes=torch.zeros(n, dtype=torch.long, device=boxes.device))]
        instances = roi.forward_with_given_boxes(features, instances)
        clock.lap("network")
    result = detector_postprocess(instances[0], height, width)
    clock.lap("post")
    return result


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a Detectron2 ``Conv2d`` into its weights, as deployment does; in place."""
    for m in model.modules():
        if isinstance(m, Conv2d) and isinstance(m.norm, nn.BatchNorm2d):
            bn = m.norm
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if m.bias is not None:
                bias = bias + m.bias * scale
            m.weight = nn.Parameter(m.weight * scale.view(-1, 1, 1, 1))
            m.bias = nn.Parameter(bias)
            m.norm = None
    return model


def _layer_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.ConvTranspose2d):
        kh, kw = m.kernel_size
        return inp.numel() * (m.out_channels // m.groups) * kh * kw
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out.numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return 0


def detector_params_macs(model: GeneralizedRCNN, height: int, width: int) -> tuple[int, int]:
    """(parameters, MACs) of the whole detector on one ``height`` x ``width`` image, counts pinned.

    MACs are those of the convolutions, transposed convolutions and fully connected layers of backbone,
    FPN, RPN head, box head (on ``POST_NMS_TOPK_TEST`` proposals) and mask head (on ``DETECTIONS_PER_IMAGE``
    boxes); BatchNorm (folded at deployment), activations, RoIAlign and post-processing are not counted.
    """
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(m, inp[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    try:
        staged_inference(model.eval(), torch.zeros(3, height, width), pin=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sum(p.numel() for p in model.parameters()), total
