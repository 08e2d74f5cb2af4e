"""The slimmable SSL objective: US3L's switches (its ablation tables) over a registered base objective, and presets.

Switches (:class:`SSLConfig`):
- ``base_loss``: the registered base objective (:mod:`us3l.objectives`, one file each) of the base
  network (the widest trained width): ``infonce`` NT-Xent (SimCLR; US3L's Eq. 2 with ``momentum_base``),
  ``infonce_qk`` MoCo's query-key InfoNCE (plus the queue), ``mse`` negative cosine through a predictor
  (BYOL with ``momentum_base``, SimSiam without).
- ``distill_loss`` for the sub-networks: ``none`` (one width), ``own`` (each sub-network trained with
  the base loss on its own outputs, no distillation; the momentum encoder runs at the same width),
  ``mse`` (negative cosine) or ``infonce`` (NT-Xent of student against detached teacher) toward a target.
- ``aux_head``: ``off`` (sub-networks' projections are distilled directly) | ``shared`` (they go
  through the base's head: the base objective's predictor if it has one, as ``mse``, else a head g that
  the base's projection also goes through) | ``new`` (a head g used by sub-networks only; US3L).
- ``momentum_base`` / ``momentum_sub``: whether the base objective's targets / the distillation target
  come from the momentum encoder (EMA of backbone and projector, full width) rather than the base network.
- ``distill_view``: the target is the other view's (``cross``, Algorithm 1) or the same view's.
- ``sampler`` / ``num_widths`` / ``dynamic_stages``: see :mod:`us3l.samplers`.
- ``regularizer`` / ``group_alpha`` / ``groups`` / ``group_schedule``: see :mod:`us3l.group_reg`.

:meth:`SSLConfig.terms` says in words what a configuration trains each network with; :class:`SSLModel`
dispatches on the same properties, and the tests pin both.

One iteration (:meth:`SSLModel.train_step`, Algorithm 1): update the momentum encoder (EMA, once,
before the teacher forward), compute its full-width projections of both views, then for each
sampled width (the first is the base) forward both views, compute its loss and call ``backward``
on it; gradients of all widths accumulate and the caller steps the optimizer once.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .channels import WidthError, check_width
from .group_reg import ALPHA_SCHEDULES, check_alpha
from .layers import set_width
from .losses import at_least_fp32, nt_xent, unit_mse
from .models import USResNet, build_model
from .objectives import OBJECTIVES, Objective, Pair, get_objective, mlp
from .samplers import SAMPLER_ALIASES, SAMPLERS, Sampler, build_sampler

DISTILL_LOSSES = ("none", "own", "mse", "infonce")
AUX_HEADS = ("off", "shared", "new")
DISTILL_VIEWS = ("cross", "same")
REGULARIZERS = ("group", "weight_decay")


@dataclass
class SSLConfig:
    """The objective's switches and head sizes (defaults: the ``us3l`` preset, CIFAR recipe)."""

    base_loss: str = "infonce"
    distill_loss: str = "mse"
    aux_head: str = "new"
    momentum_base: bool = True
    momentum_sub: bool = True
    sampler: str = "dynamic"
    num_widths: int = 3
    dynamic_stages: list[float] = field(default_factory=list)
    distill_view: str = "cross"
    regularizer: str = "group"
    ema: float = 0.99
    temperature: float = 0.5
    distill_temperature: float = 0.5
    queue_size: int = 0
    proj_layers: int = 3
    proj_hidden: int = 2048
    proj_dim: int = 256
    proj_out_bn: bool = False
    pred_hidden: int = 2048
    aux_hidden: int = 2048
    group_alpha: float = 0.05
    groups: int = 8
    group_schedule: str = "ramp"
    width: float = 1.0

    def validate(self) -> SSLConfig:
        """Raise ``ValueError`` (one line, naming the fix) for an inconsistent configuration."""
        if self.sampler in SAMPLER_ALIASES:  # an older name fixes the number of widths
            self.num_widths = SAMPLER_ALIASES[self.sampler][1]
        for name, allowed in (("base_loss", tuple(sorted(OBJECTIVES))), ("distill_loss", DISTILL_LOSSES),
                              ("aux_head", AUX_HEADS), ("sampler", (*SAMPLERS, *SAMPLER_ALIASES)),
                              ("distill_view", DISTILL_VIEWS),
                              ("regularizer", REGULARIZERS), ("group_schedule", ALPHA_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        self._validate_types()
        if self.sampler == "single" and self.distill_loss != "none":
            raise ValueError("sampler=single trains one width: set distill_loss=none (or pick a multi-width sampler)")
        if self.sampler != "single" and self.distill_loss == "none":
            raise ValueError(f"sampler={self.sampler} trains sub-networks: set distill_loss to own, mse or infonce")
        if self.aux_head != "off" and self.distill_loss in ("none", "own"):
            raise ValueError(f"aux_head={self.aux_head} needs sub-network distillation (distill_loss mse or "
                             f"infonce): set aux_head=off")
        self.make_objective().check()
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.temperature <= 0 or self.distill_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if self.proj_layers not in (2, 3):
            raise ValueError(f"proj_layers must be 2 or 3, got {self.proj_layers}")
        lowest = 1 if self.sampler in ("random", "single") else 2
        if self.num_widths < lowest:
            raise ValueError(f"sampler={self.sampler} needs num_widths >= {lowest}, got {self.num_widths}")
        if self.dynamic_stages and self.sampler != "dynamic":
            raise ValueError("dynamic_stages applies to sampler=dynamic only: remove it or set sampler=dynamic")
        for w in self.dynamic_stages:
            try:
                check_width(w)
            except WidthError as e:
                raise WidthError(f"dynamic_stages: {e}") from None
        check_alpha(self.group_alpha, self.groups)
        return self

    def _validate_types(self) -> None:
        for f in fields(self):
            value, default = getattr(self, f.name), getattr(SSLConfig(), f.name)
            if f.name == "dynamic_stages":
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(w, (int, float)) and not isinstance(w, bool) for w in value):
                    raise ValueError(f"dynamic_stages must be a list of widths, e.g. [1.0, 0.75, 0.5, 0.25], "
                                     f"got {value!r}")
                self.dynamic_stages = [float(w) for w in value]
            elif isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")
            elif isinstance(default, int) and not isinstance(default, bool) and (
                    isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{f.name} must be a number, got {value!r}")

    @property
    def uses_momentum(self) -> bool:
        return self.momentum_base or (self.momentum_sub and self.distill_loss in ("mse", "infonce"))

    @property
    def has_predictor(self) -> bool:
        return get_objective(self.base_loss).has_predictor

    @property
    def base_head(self) -> str:
        """What follows the projector for the base loss: ``predictor``, ``g`` (shared) or ``none``."""
        if self.has_predictor:
            return "predictor"
        return "g" if self.aux_head == "shared" else "none"

    @property
    def sub_head(self) -> str:
        """What follows the projector for the sub-networks' loss (``-`` when there are none)."""
        if self.distill_loss == "none":
            return "-"
        if self.distill_loss == "own" or self.aux_head == "shared":
            return self.base_head
        return "g" if self.aux_head == "new" else "none"

    def make_objective(self) -> Objective:
        """The base objective ``base_loss`` names, over these switches."""
        return get_objective(self.base_loss)(self)

    def make_sampler(self, total_iters: int, width_range: tuple[float, float], seed: int = 0) -> Sampler:
        """The width sampler these switches describe."""
        return build_sampler(self.sampler, total_iters, width_range, seed, self.width, self.num_widths,
                             tuple(self.dynamic_stages))

    def terms(self) -> dict[str, str]:
        """What each network is trained with, in words: the ablation tables' columns."""
        base, target = self.make_objective().describe()
        sub, sub_target = "-", "-"
        if self.distill_loss == "own":
            sub, sub_target = "own: " + base, target.replace("momentum", "momentum at own width")
        elif self.distill_loss != "none":
            sub = {"mse": "cosine", "infonce": "nt_xent(student, teacher)"}[self.distill_loss]
            source = "momentum" if self.momentum_sub else "base projection (detached)"
            sub_target = f"{source}, {'other' if self.distill_view == 'cross' else 'same'} view"
        if self.regularizer == "group":
            reg = f"group alpha={self.group_alpha:g} G={self.groups} {self.group_schedule}"
        else:
            reg = "weight decay"
        return {"base": base, "base_head": self.base_head, "base_target": target, "sub": sub,
                "sub_head": self.sub_head, "sub_target": sub_target, "sampler": self._sampler_words(),
                "regularizer": reg}

    def _sampler_words(self) -> str:
        if self.sampler == "single":
            return f"single w={self.width:g}"
        if self.sampler == "dynamic":
            stages = "/".join(f"{w:g}" for w in self.dynamic_stages) if self.dynamic_stages else "quarters"
            return f"dynamic n={self.num_widths} ({stages})"
        return f"{self.sampler} n={self.num_widths}"


# Hyper-parameters: CIFAR (paper Table 11, the same values as the authors' released CIFAR configs):
# SimCLR / US3L projector 2048-256, tau 0.5; SimSiam / BYOL projector 2048-2048, predictor 2048, BYOL
# EMA 0.99. From the authors' code (the paper is silent): 3-layer projectors, SimSiam's projector
# output BN, heads' first layer without bias. Optimizer values (lr, weight decay) live in the config
# files, because they differ between CIFAR and ImageNet for the same method.
_SIMCLR_HEADS = {"proj_hidden": 2048, "proj_dim": 256, "temperature": 0.5}
_SIAMESE_HEADS = {"proj_hidden": 2048, "proj_dim": 2048, "pred_hidden": 2048, "aux_hidden": 2048}
_SINGLE = {"distill_loss": "none", "aux_head": "off", "momentum_sub": False, "sampler": "single",
           "regularizer": "weight_decay"}
# The US-Net baselines: sandwich of 3 (the authors' released US+ configs), in-place distillation by
# negative cosine toward the other view (Algorithm 1), plain weight decay.
_US_NET = {"distill_loss": "mse", "distill_view": "cross", "sampler": "sandwich", "num_widths": 3,
           "regularizer": "weight_decay"}
PRESETS: dict[str, dict] = {
    "us3l": {**_SIMCLR_HEADS, "aux_hidden": 2048},
    "us3l_byol": {**_SIAMESE_HEADS, "base_loss": "mse", "momentum_base": True},
    "us_simclr": {**_US_NET, **_SIMCLR_HEADS, "base_loss": "infonce", "momentum_base": False,
                  "momentum_sub": False, "aux_head": "off"},
    "us_simsiam": {**_US_NET, **_SIAMESE_HEADS, "base_loss": "mse", "momentum_base": False,
                   "momentum_sub": False, "aux_head": "shared", "proj_out_bn": True},
    "us_byol": {**_US_NET, **_SIAMESE_HEADS, "base_loss": "mse", "momentum_base": True, "momentum_sub": True,
                "aux_head": "shared"},
    "simclr": {**_SINGLE, **_SIMCLR_HEADS, "base_loss": "infonce", "momentum_base": False},
    "simsiam": {**_SINGLE, **_SIAMESE_HEADS, "base_loss": "mse", "momentum_base": False, "proj_out_bn": True},
    "byol": {**_SINGLE, **_SIAMESE_HEADS, "base_loss": "mse", "momentum_base": True, "ema": 0.99},
    # MoCo v2's own recipe (its paper): 2-layer 2048-128 projector, tau 0.2, EMA 0.999, queue 65536.
    "mocov2": {**_SINGLE, "base_loss": "infonce_qk", "momentum_base": True, "ema": 0.999, "temperature": 0.2,
               "queue_size": 65536, "proj_layers": 2, "proj_hidden": 2048, "proj_dim": 128},
}
SSL_FIELDS = tuple(f.name for f in fields(SSLConfig))


def preset_config(preset: str, **overrides) -> SSLConfig:
    """The :class:`SSLConfig` of a named preset with ``overrides`` applied, validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(SSL_FIELDS))
    if unknown:
        raise ValueError(f"unknown objective switch(es) {unknown}; known: {list(SSL_FIELDS)}")
    return SSLConfig(**{**PRESETS[preset], **overrides}).validate()


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``t <- m t + (1 - m) o`` for every parameter of ``target`` and its twin in ``online``."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)


def projection_std(z: torch.Tensor) -> float:
    """Collapse monitor: mean per-dimension std of the unit-normalised rows (0 = collapsed; ~1/sqrt(D) healthy)."""
    return F.normalize(at_least_fp32(z.detach()), dim=1).std(dim=0).mean().item()


class Encoder(nn.Module):
    """Slimmable backbone + projector (the projector's input follows the backbone's width)."""

    def __init__(self, backbone: USResNet, cfg: SSLConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(backbone.feature_dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, slim_in=True,
                             out_bn=cfg.proj_out_bn)

    def set_width(self, width: float) -> None:
        set_width(self.backbone, width)
        self.projector[0].width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


@dataclass
class StepOutput:
    """What one iteration computed: total loss, per-width losses and projection std, widths."""

    loss: float
    losses: list[float]
    widths: list[float]
    proj_std: list[float]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class SSLModel(nn.Module):
    """Student encoder, heads, (optionally) the momentum encoder, and the base objective's buffers."""

    def __init__(self, cfg: SSLConfig, arch: str = "resnet50", stem: str = "imagenet",
                 width_range: tuple[float, float] = (0.25, 1.0)) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.objective = cfg.make_objective()
        # Creation order fixes parameter order and initial values: encoder, predictor, g, momentum encoder, buffers.
        self.encoder = Encoder(build_model(arch, stem=stem, num_classes=0, width_range=width_range), cfg)
        self.predictor = self.objective.build_predictor()
        needs_g = "g" in (cfg.base_head, cfg.sub_head)
        self.aux_head = mlp(cfg.proj_dim, cfg.aux_hidden, cfg.proj_dim, first_bias=False) if needs_g else None
        self.momentum_encoder = None
        if cfg.uses_momentum:
            self.momentum_encoder = copy.deepcopy(self.encoder)
            self.momentum_encoder.requires_grad_(False)
        for name, tensor in self.objective.build_buffers().items():
            self.register_buffer(name, tensor)
        self.max_width = float(width_range[1])

    @property
    def backbone(self) -> USResNet:
        return self.encoder.backbone

    def head(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """``z`` through the head :attr:`SSLConfig.base_head` / :attr:`SSLConfig.sub_head` names."""
        return {"predictor": self.predictor, "g": self.aux_head}.get(name, _identity)(z)

    def distill_loss(self, s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """Sub-network outputs ``s`` toward detached targets ``t`` (cross or same view)."""
        t1, t2 = t1.detach(), t2.detach()
        pairs = ((s1, t2), (s2, t1)) if self.cfg.distill_view == "cross" else ((s1, t1), (s2, t2))
        if self.cfg.distill_loss == "mse":
            return 0.5 * sum(unit_mse(s, t) for s, t in pairs)
        return 0.5 * sum(nt_xent(s, t, self.cfg.distill_temperature) for s, t in pairs)

    @torch.no_grad()
    def _teacher(self, views: torch.Tensor, width: float, gather: Callable, autocast: Callable) -> Pair:
        with autocast():
            self.momentum_encoder.set_width(width)
            k = self.momentum_encoder(views)
        self.momentum_encoder.set_width(self.max_width)
        return tuple(gather(at_least_fp32(t)) for t in k.chunk(2))

    def train_step(self, x1: torch.Tensor, x2: torch.Tensor, widths: list[float],
                   backward: Callable[[torch.Tensor], None],
                   gather: Callable[[torch.Tensor], torch.Tensor] = _identity,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> StepOutput:
        """One iteration; ``widths[0]`` is the base network. ``gather`` concatenates a tensor over
        processes (with gradient) so losses see the global batch; ``backward`` is called once per width."""
        cfg = self.cfg
        views = torch.cat([x1, x2])
        k: Pair | None = None  # the momentum encoder's full-width projections
        if self.momentum_encoder is not None:
            ema_update_(self.momentum_encoder, self.encoder, cfg.ema)
            k = self._teacher(views, self.max_width, gather, autocast)
        out = StepOutput(0.0, [], [], [])
        z_max: Pair | None = None
        try:
            for i, w in enumerate(widths):
                self.encoder.set_width(w)
                own = i > 0 and cfg.distill_loss == "own"
                with autocast():
                    z = self.encoder(views)
                    h = self.head(cfg.base_head if i == 0 or own else cfg.sub_head, z)
                z1, z2 = (gather(at_least_fp32(t)) for t in z.chunk(2))
                h1, h2 = (gather(at_least_fp32(t)) for t in h.chunk(2))
                if i == 0:
                    loss = self.objective.loss((h1, h2), (z1, z2), k if cfg.momentum_base else None, self)
                    z_max = (z1.detach(), z2.detach())
                elif own:
                    kw = self._teacher(views, w, gather, autocast) if cfg.momentum_base else None
                    loss = self.objective.loss((h1, h2), (z1, z2), kw, self)
                else:
                    loss = self.distill_loss(h1, h2, *(k if cfg.momentum_sub else z_max))
                backward(loss)
                out.losses.append(loss.item())
                out.widths.append(float(w))
                out.proj_std.append(projection_std(torch.cat([z1, z2])))
        finally:
            self.encoder.set_width(self.max_width)
        self.objective.after_step(k, self)
        out.loss = sum(out.losses)
        return out
