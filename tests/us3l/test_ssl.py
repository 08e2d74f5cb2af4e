"""The configurable objective: what each switch changes, the teacher, the heads, Algorithm 1's accumulation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from support import hand_losses as hand

from us3l.ssl import PRESETS, SSLModel, ema_update_, preset_config, projection_std

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 16, "aux_hidden": 32}
WIDTHS = [1.0, 0.5, 0.25]


def _views(n: int = 6, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def _model(preset: str = "us3l", **switches) -> SSLModel:
    torch.manual_seed(0)
    extra = {"queue_size": 24} if preset == "mocov2" else {}
    return SSLModel(preset_config(preset, **{**SMALL, **extra, **switches}), "resnet18", "imagenet")


def _run(cfg, iterations: int = 3, width_range=(0.25, 1.0)):
    torch.manual_seed(0)
    model = SSLModel(cfg, "resnet18", "imagenet", width_range)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    # Total 4 iterations so that iterations 1-3 of the dynamic sampler train three widths.
    sampler = cfg.make_sampler(4, width_range)
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


def test_momentum_encoder_gets_no_gradient_and_changes_only_by_ema():
    model = _model("us3l")
    with torch.no_grad():  # make student and teacher differ
        for p in model.encoder.parameters():
            p.add_(0.01)
    # Even an optimizer handed every parameter must leave the teacher alone.
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    x1, x2 = _views()
    for _ in range(3):
        student0 = [p.detach().clone() for p in model.encoder.parameters()]
        teacher0 = [p.detach().clone() for p in model.momentum_encoder.parameters()]
        opt.zero_grad()
        model.train_step(x1, x2, WIDTHS, lambda loss: loss.backward())
        assert all(p.grad is None for p in model.momentum_encoder.parameters())
        assert not any(p.requires_grad for p in model.momentum_encoder.parameters())
        opt.step()
        for t, t0, s0 in zip(model.momentum_encoder.parameters(), teacher0, student0):
            assert torch.allclose(t, 0.99 * t0 + 0.01 * s0, atol=1e-7)
    assert model.momentum_encoder.backbone.width == 1.0  # the teacher runs at full width


def test_one_backward_per_width_and_gradients_accumulate():
    model = _model("us3l")
    calls = []
    x1, x2 = _views()
    out = model.train_step(x1, x2, [1.0, 0.6, 0.25], lambda loss: (calls.append(loss.item()), loss.backward()))
    assert calls == out.losses and len(calls) == 3 and out.widths == [1.0, 0.6, 0.25]
    assert out.loss == pytest.approx(sum(calls))
    w = model.encoder.backbone.layer1[0].conv1.weight.grad
    assert w is not None and w.abs().sum() > 0
    assert model.aux_head[0].weight.grad.abs().sum() > 0  # the auxiliary head trained on sub-networks
    assert model.encoder.backbone.width == 1.0  # left at full width


def _head_calls(model: SSLModel) -> dict[str, set[float]]:
    """Run one step and record at which student widths the predictor and g were called."""
    seen: dict[str, set[float]] = {"predictor": set(), "g": set()}
    for name, mod in (("predictor", model.predictor), ("g", model.aux_head)):
        if mod is not None:
            mod.register_forward_hook(lambda *_, name=name: seen[name].add(model.encoder.backbone.width))
    model.train_step(*_views(), WIDTHS, lambda loss: loss.backward())
    return seen


@pytest.mark.parametrize("preset, switches, predictor, g", [
    ("us3l", {}, set(), {0.5, 0.25}),  # US3L: g on sub-networks only
    ("us3l", {"aux_head": "shared"}, set(), {1.0, 0.5, 0.25}),
    ("us3l", {"aux_head": "off"}, set(), set()),
    ("us3l_byol", {}, {1.0}, {0.5, 0.25}),  # BYOL base: predictor on the base, g on sub-networks
    ("us_simsiam", {}, {1.0, 0.5, 0.25}, set()),  # US+SimSiam shares the predictor
    ("us_simsiam", {"aux_head": "off"}, {1.0}, set()),
    ("us_simsiam", {"aux_head": "off", "distill_loss": "own"}, {1.0, 0.5, 0.25}, set()),
])
def test_heads_are_used_by_the_networks_their_switch_names(preset, switches, predictor, g):
    model = _model(preset, **switches)
    calls = _head_calls(model)
    assert calls == {"predictor": predictor, "g": g}
    for name, widths in calls.items():  # and the words of SSLConfig.terms() say the same
        assert (1.0 in widths) == (model.cfg.base_head == name)
        assert bool(widths & {0.5, 0.25}) == (model.cfg.sub_head == name)


def test_aux_head_gets_no_gradient_from_the_base_network():
    model = _model("us3l")
    model.train_step(*_views(), [1.0], lambda loss: loss.backward())
    assert all(p.grad is None for p in model.aux_head.parameters())
    assert model.encoder.projector[0].weight.grad is not None


def _outputs(model: SSLModel, x1, x2):
    """Replay one step by hand on a copy: EMA, teacher, student projections and head outputs per width."""
    m = copy.deepcopy(model)
    k = None
    with torch.no_grad():
        if m.momentum_encoder is not None:
            ema_update_(m.momentum_encoder, m.encoder, m.cfg.ema)
            k = m.momentum_encoder(torch.cat([x1, x2])).chunk(2)
        m.encoder.set_width(1.0)
        z = m.encoder(torch.cat([x1, x2]))
        h = m.head(m.cfg.base_head, z)
    return [t.tolist() for t in (*h.chunk(2), *z.chunk(2))], None if k is None else [t.tolist() for t in k]


@pytest.mark.parametrize("preset", ["simclr", "us3l", "mocov2", "simsiam", "byol", "us3l_byol"])
def test_base_loss_equals_hand_computation(preset):
    """The loss train_step reports for the base network, recomputed by hand from the replayed outputs."""
    model = _model(preset)
    x1, x2 = _views()
    (h1, h2, z1, z2), k = _outputs(model, x1, x2)
    t = model.cfg.temperature
    expected = {
        "simclr": lambda: hand.nt_xent(h1, h2, t),
        "us3l": lambda: hand.eq2(h1, h2, *k, t),
        "mocov2": lambda: hand.qk(h1, h2, *k, t, model.queue.tolist()),
        "simsiam": lambda: hand.symmetric_cosine(h1, h2, z1, z2),
        "byol": lambda: hand.symmetric_cosine(h1, h2, *k),
        "us3l_byol": lambda: hand.symmetric_cosine(h1, h2, *k),
    }[preset]()
    out = model.train_step(x1, x2, [1.0], lambda loss: None)
    assert out.losses[0] == pytest.approx(expected, rel=1e-5, abs=1e-6)


# One flag at a time: (preset, flag, new value, terms the flag names). The terms' words change exactly
# there, and the loss of exactly those networks changes numerically (same weights, same inputs).
FLAGS = [
    ("us3l", "base_loss", "mse", {"base", "base_head"}),
    ("us3l", "momentum_base", False, {"base", "base_target"}),
    ("us3l", "distill_loss", "infonce", {"sub"}),
    ("us3l", "aux_head", "off", {"sub_head"}),
    ("us3l", "aux_head", "shared", {"base_head"}),  # g was the sub-networks' already
    ("us3l", "momentum_sub", False, {"sub_target"}),
    ("us3l", "distill_view", "same", {"sub_target"}),
    ("us3l", "sampler", "sandwich", {"sampler"}),
    ("us3l", "num_widths", 4, {"sampler"}),
    ("us3l", "group_alpha", -0.05, {"regularizer"}),
    ("us3l", "group_schedule", "step", {"regularizer"}),
    ("us_simsiam", "momentum_base", True, {"base_target"}),  # SimSiam -> BYOL: same cosine
    ("us_simsiam", "momentum_sub", True, {"sub_target"}),
    ("us_simsiam", "aux_head", "new", {"sub_head"}),
]
LOSS_OF = {"base": 0, "base_head": 0, "base_target": 0, "sub": 1, "sub_head": 1, "sub_target": 1}


@pytest.mark.parametrize("preset, flag, value, named", FLAGS, ids=lambda v: str(v))
def test_switching_one_flag_changes_exactly_the_term_it_names(preset, flag, value, named):
    a, b = _model(preset), _model(preset, **{flag: value})
    changed = {key for key, words in a.cfg.terms().items() if b.cfg.terms()[key] != words}
    assert changed == named
    torch.manual_seed(1)
    with torch.no_grad():  # a student that differs from its momentum teacher
        for p in a.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shared = {k: v for k, v in a.state_dict().items() if k in b.state_dict() and v.shape == b.state_dict()[k].shape}
    b.load_state_dict(shared, strict=False)
    x1, x2 = _views()
    la = a.train_step(x1, x2, WIDTHS, lambda loss: None).losses
    lb = b.train_step(x1, x2, WIDTHS, lambda loss: None).losses
    base_changed = la[0] != pytest.approx(lb[0], rel=1e-6)
    subs_changed = la[1:] != pytest.approx(lb[1:], rel=1e-6)
    assert (base_changed, subs_changed) == (any(LOSS_OF.get(t) == 0 for t in named),
                                            any(LOSS_OF.get(t) == 1 for t in named))
    if flag in ("sampler", "num_widths"):
        assert [a.cfg.make_sampler(8, (0.25, 1.0)).widths(i) for i in range(8)] != \
            [b.cfg.make_sampler(8, (0.25, 1.0)).widths(i) for i in range(8)]


def test_own_loss_trains_each_sub_network_with_the_base_loss_at_its_width():
    model = _model("us3l", distill_loss="own", aux_head="off", momentum_sub=False)
    x1, x2 = _views()
    out = model.train_step(x1, x2, [1.0, 0.5], lambda loss: None)
    m = copy.deepcopy(model)
    with torch.no_grad():  # by hand: EMA once, then student and momentum encoder both at width 0.5
        ema_update_(m.momentum_encoder, m.encoder, m.cfg.ema)
        m.encoder.set_width(0.5)
        m.momentum_encoder.set_width(0.5)
        h1, h2 = (t.tolist() for t in m.encoder(torch.cat([x1, x2])).chunk(2))
        k1, k2 = (t.tolist() for t in m.momentum_encoder(torch.cat([x1, x2])).chunk(2))
    assert out.losses[1] == pytest.approx(hand.eq2(h1, h2, k1, k2, 0.5), rel=1e-5)
    assert model.momentum_encoder.backbone.width == 1.0


def test_distillation_targets_are_the_documented_ones():
    """US3L: g(student) toward the momentum projection of the other view, negative cosine."""
    model = _model("us3l")
    x1, x2 = _views()
    out = model.train_step(x1, x2, [1.0, 0.5], lambda loss: None)
    m = copy.deepcopy(model)
    with torch.no_grad():
        ema_update_(m.momentum_encoder, m.encoder, m.cfg.ema)
        k1, k2 = (t.tolist() for t in m.momentum_encoder(torch.cat([x1, x2])).chunk(2))
        m.encoder.set_width(0.5)
        s1, s2 = (t.tolist() for t in m.aux_head(m.encoder(torch.cat([x1, x2]))).chunk(2))
    assert out.losses[1] == pytest.approx(hand.symmetric_cosine(s1, s2, k1, k2), rel=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_three_iterations(preset):
    extra = {"queue_size": 24} if preset == "mocov2" else {}
    cfg = preset_config(preset, **SMALL, **extra)
    model, outs = _run(cfg)
    assert len(outs) == 3 and all(math.isfinite(o.loss) for o in outs)
    expected_widths = 1 if cfg.sampler == "single" else 3
    assert all(len(o.widths) == expected_widths for o in outs)
    assert all(0 < s < 1 for o in outs for s in o.proj_std)


def test_presets_carry_the_published_hyper_parameters():
    """Table 11 (CIFAR) and the authors' configs: heads, temperature, EMA per method."""
    us3l, simclr, simsiam, byol = (preset_config(p) for p in ("us3l", "simclr", "simsiam", "byol"))
    assert (us3l.proj_hidden, us3l.proj_dim, us3l.aux_hidden, us3l.temperature, us3l.ema) == (2048, 256, 2048, 0.5,
                                                                                               0.99)
    assert (simclr.proj_hidden, simclr.proj_dim, simclr.temperature) == (2048, 256, 0.5)
    for cfg in (simsiam, byol):
        assert (cfg.proj_hidden, cfg.proj_dim, cfg.pred_hidden) == (2048, 2048, 2048)
    assert byol.ema == 0.99 and simsiam.proj_out_bn and not byol.proj_out_bn
    us_simsiam = preset_config("us_simsiam")
    assert (us_simsiam.aux_head, us_simsiam.distill_view) == ("shared", "cross")


def test_mocov2_queue_fills():
    cfg = preset_config("mocov2", **SMALL, queue_size=24)
    model, _ = _run(cfg, iterations=2)
    assert int(model.queue_ptr) == (2 * 12) % 24
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(24), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ({"base_loss": "l1"}, "base_loss"),
    ({"sampler": "single"}, "distill_loss=none"),
    ({"distill_loss": "none"}, "sub-networks"),
    ({"distill_loss": "own"}, "aux_head=off"),
    ({"queue_size": 8}, "MoCo"),
    ({"base_loss": "infonce_qk", "momentum_base": False}, "momentum_base=true"),
    ({"group_alpha": 0.2}, "group_alpha <= 0.1429"),
    ({"group_schedule": "cosine"}, "group_schedule"),
    ({"num_widths": 1}, "num_widths >= 2"),
    ({"num_widths": 2.5}, "integer"),
    ({"dynamic_stages": [1.0, 0.0]}, r"dynamic_stages: .*\(0, 1\]"),
    ({"dynamic_stages": [0.5], "sampler": "sandwich"}, "sampler=dynamic only"),
    ({"proj_layers": 4}, "proj_layers"),
    ({"nope": 1}, "unknown objective switch"),
])
def test_inconsistent_switches_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        preset_config("us3l", **bad)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("dino")


def test_negative_group_alpha_is_accepted():
    """Table 14's reversed case: later channel groups decayed more (alpha = -0.05)."""
    assert preset_config("us3l", group_alpha=-0.05).group_alpha == -0.05


def test_older_sampler_names_still_work():
    cfg = preset_config("us3l", sampler="usnet")
    assert (cfg.sampler, cfg.num_widths) == ("usnet", 4)
    assert len(cfg.make_sampler(10, (0.25, 1.0)).widths(3)) == 4


def test_projection_std_detects_collapse():
    assert projection_std(torch.ones(8, 4)) == 0.0
    assert projection_std(torch.eye(64)) > 0.1


def test_us3l_heads_have_the_papers_shapes():
    model = SSLModel(preset_config("us3l"), "resnet18", "imagenet")
    proj, g = model.encoder.projector, model.aux_head
    linears = [m for m in proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048), (2048, 256)]
    assert (g[0].in_features, g[0].out_features, g[0].bias) == (256, 2048, None)
    assert isinstance(g[1], torch.nn.BatchNorm1d) and (g[3].in_features, g[3].out_features) == (2048, 256)
    assert model.predictor is None and model.cfg.temperature == 0.5 and model.cfg.ema == 0.99
