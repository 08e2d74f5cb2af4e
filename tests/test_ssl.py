"""The configurable objective: EMA, presets and every Table 7 switch, Algorithm 1's accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from us3l.samplers import build_sampler
from us3l.ssl import PRESETS, SSLModel, ema_update_, preset_config, projection_std

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 16, "aux_hidden": 32}


def _views(n: int = 6, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def _run(cfg, iterations: int = 3, width_range=(0.25, 1.0)):
    torch.manual_seed(0)
    model = SSLModel(cfg, "resnet18", "imagenet", width_range)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    # Total 4 iterations so that iterations 1-3 of the dynamic sampler train three widths.
    sampler = build_sampler(cfg.sampler, 4, width_range, width=cfg.width)
    x1, x2 = _views()
    outs = []
    for it in range(iterations):
        opt.zero_grad()
        outs.append(model.train_step(x1, x2, sampler.widths(it + 1), lambda loss: loss.backward()))
        opt.step()
    return model, outs


def test_ema_update_formula():
    target, online = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, 0.99)
    for p, p0, o in zip(target.parameters(), t0, online.parameters()):
        assert torch.allclose(p, 0.99 * p0 + 0.01 * o.detach())


def test_momentum_updated_once_before_teacher_forward():
    cfg = preset_config("us3l", **SMALL)
    model = SSLModel(cfg, "resnet18", "imagenet")
    with torch.no_grad():  # make student and teacher differ
        for p in model.encoder.parameters():
            p.add_(0.01)
    student0 = [p.detach().clone() for p in model.encoder.parameters()]
    teacher0 = [p.detach().clone() for p in model.momentum_encoder.parameters()]
    opt = torch.optim.SGD(model.encoder.parameters(), lr=0.1)
    x1, x2 = _views()
    model.train_step(x1, x2, [1.0, 0.5, 0.25], lambda loss: loss.backward())
    opt.step()
    for t, t0, s0 in zip(model.momentum_encoder.parameters(), teacher0, student0):
        assert torch.allclose(t, 0.99 * t0 + 0.01 * s0, atol=1e-7)
    assert not any(p.requires_grad for p in model.momentum_encoder.parameters())


def test_one_backward_per_width_and_gradients_accumulate():
    cfg = preset_config("us3l", **SMALL)
    model = SSLModel(cfg, "resnet18", "imagenet")
    calls = []
    x1, x2 = _views()
    out = model.train_step(x1, x2, [1.0, 0.6, 0.25], lambda loss: (calls.append(loss.item()), loss.backward()))
    assert calls == out.losses and len(calls) == 3 and out.widths == [1.0, 0.6, 0.25]
    assert out.loss == pytest.approx(sum(calls))
    # Channels beyond the smallest width get gradient only from wider passes; the first channels from all.
    w = model.encoder.backbone.layer1[0].conv1.weight.grad
    assert w is not None and w.abs().sum() > 0
    assert model.aux_head[0].weight.grad.abs().sum() > 0  # the auxiliary head trained on sub-networks
    assert model.encoder.backbone.width == 1.0  # left at full width


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_three_iterations(preset):
    extra = {"queue_size": 24} if preset == "mocov2" else {}
    model, outs = _run(preset_config(preset, **SMALL, **extra))
    assert len(outs) == 3 and all(math.isfinite(o.loss) for o in outs)
    expected_widths = {"us3l": 3, "us_simclr": 4, "us_simsiam": 4}.get(preset, 1)
    assert all(len(o.widths) == expected_widths for o in outs)
    assert all(0 < s < 1 for o in outs for s in o.proj_std)


SWITCHES = [
    {"base_loss": "infonce"}, {"base_loss": "mse"},
    {"distill_loss": "mse"}, {"distill_loss": "infonce"},
    {"aux_head": "off"}, {"aux_head": "shared"}, {"aux_head": "new"},
    {"aux_head": "shared", "base_loss": "mse"},
    {"momentum_base": False}, {"momentum_sub": False}, {"momentum_base": False, "momentum_sub": False},
    {"sampler": "usnet"}, {"sampler": "sandwich3"}, {"distill_view": "same"},
    {"distill_loss": "none", "aux_head": "off", "sampler": "single"},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_table7_switch_runs_three_iterations(switch):
    cfg = preset_config("us3l", **SMALL, **switch)
    model, outs = _run(cfg)
    assert all(math.isfinite(o.loss) for o in outs)
    assert (model.momentum_encoder is not None) == (cfg.momentum_base or cfg.momentum_sub)


def test_mocov2_queue_fills():
    cfg = preset_config("mocov2", **SMALL, queue_size=24)
    model, _ = _run(cfg, iterations=2)
    assert int(model.queue_ptr) == (2 * 12) % 24
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(24), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ({"base_loss": "l1"}, "base_loss"),
    ({"sampler": "single"}, "distill_loss=none"),
    ({"distill_loss": "none"}, "sub-networks"),
    ({"queue_size": 8, "momentum_base": False}, "MoCo"),
    ({"nope": 1}, "unknown objective switch"),
])
def test_inconsistent_switches_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        preset_config("us3l", **bad)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("dino")


def test_projection_std_detects_collapse():
    assert projection_std(torch.ones(8, 4)) == 0.0
    assert projection_std(torch.eye(64)) > 0.1


def test_us3l_heads_have_the_papers_shapes():
    model = SSLModel(preset_config("us3l"), "resnet18", "imagenet")
    proj, g = model.encoder.projector, model.aux_head
    assert (proj[0].in_features, proj[0].out_features, proj[3].out_features) == (512, 2048, 256)
    assert (g[0].in_features, g[0].out_features, g[0].bias) == (256, 2048, None)
    assert isinstance(g[1], torch.nn.BatchNorm1d) and (g[3].in_features, g[3].out_features) == (2048, 256)
    assert model.predictor is None and model.cfg.temperature == 0.5 and model.cfg.ema == 0.99
