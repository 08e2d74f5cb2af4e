"""One configurable slimmable SSL objective (the switches of US3L's Table 7) and its named presets.

Switches (:class:`SSLConfig`):
- ``base_loss``: ``infonce`` | ``mse`` for the base (max-width) network. ``mse`` adds a predictor
  (SimSiam/BYOL style); the target is the momentum encoder's projection when ``momentum_base``,
  else the other view's own projection, detached.
- ``distill_loss``: ``none`` | ``mse`` | ``infonce`` pulling each sub-network toward the teacher.
- ``aux_head``: ``off`` (sub-networks' projections are distilled directly) | ``shared`` (they go
  through the base's head: the predictor with an ``mse`` base, else a head g that the base's
  projection also goes through) | ``new`` (a head g used by sub-networks only; US3L).
- ``momentum_base`` / ``momentum_sub``: whether the base loss / the distillation target come from
  the momentum encoder (EMA of backbone and projector) rather than from the base network itself.

One iteration (:meth:`SSLModel.train_step`, Algorithm 1): update the momentum encoder (EMA, once,
before the teacher forward), compute its full-width projections of both views, then for each
sampled width (the first is the base) forward both views, compute its loss and call ``backward``
on it; gradients of all widths accumulate and the caller steps the optimizer once.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .layers import USLinear, set_width
from .losses import at_least_fp32, info_nce, nt_xent, unit_mse
from .models import USResNet, build_model
from .samplers import SAMPLERS

BASE_LOSSES = ("infonce", "mse")
DISTILL_LOSSES = ("none", "mse", "infonce")
AUX_HEADS = ("off", "shared", "new")
DISTILL_VIEWS = ("cross", "same")
REGULARIZERS = ("group", "weight_decay")


@dataclass
class SSLConfig:
    """The objective's switches and head sizes (defaults: the ``us3l`` preset)."""

    base_loss: str = "infonce"
    distill_loss: str = "mse"
    aux_head: str = "new"
    momentum_base: bool = True
    momentum_sub: bool = True
    sampler: str = "dynamic"
    distill_view: str = "cross"
    regularizer: str = "group"
    ema: float = 0.99
    temperature: float = 0.5
    distill_temperature: float = 0.5
    queue_size: int = 0
    proj_hidden: int = 2048
    proj_dim: int = 256
    pred_hidden: int = 512
    aux_hidden: int = 2048
    group_alpha: float = 0.05
    groups: int = 8
    width: float = 1.0

    def validate(self) -> SSLConfig:
        """Raise ``ValueError`` (one line, naming the fix) for an inconsistent configuration."""
        for name, allowed in (("base_loss", BASE_LOSSES), ("distill_loss", DISTILL_LOSSES),
                              ("aux_head", AUX_HEADS), ("sampler", SAMPLERS), ("distill_view", DISTILL_VIEWS),
                              ("regularizer", REGULARIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.sampler == "single" and self.distill_loss != "none":
            raise ValueError("sampler=single trains one width: set distill_loss=none (or pick a multi-width sampler)")
        if self.sampler != "single" and self.distill_loss == "none":
            raise ValueError(f"sampler={self.sampler} trains sub-networks: set distill_loss to mse or infonce")
        if self.aux_head != "off" and self.distill_loss == "none":
            raise ValueError("aux_head needs sub-network distillation: set aux_head=off or a distill_loss")
        if self.queue_size and not (self.base_loss == "infonce" and self.momentum_base):
            raise ValueError("queue_size > 0 (MoCo) needs base_loss=infonce and momentum_base=true")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.temperature <= 0 or self.distill_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        return self

    @property
    def uses_momentum(self) -> bool:
        return self.momentum_base or (self.momentum_sub and self.distill_loss != "none")


_SINGLE = {"distill_loss": "none", "aux_head": "off", "momentum_sub": False, "sampler": "single",
           "regularizer": "weight_decay"}
PRESETS: dict[str, dict] = {
    "us3l": {},
    "us_simclr": {"base_loss": "infonce", "momentum_base": False, "momentum_sub": False, "distill_loss": "infonce",
                  "aux_head": "off", "sampler": "usnet", "distill_view": "same", "regularizer": "weight_decay"},
    "us_simsiam": {"base_loss": "mse", "momentum_base": False, "momentum_sub": False, "distill_loss": "mse",
                   "aux_head": "off", "sampler": "usnet", "distill_view": "same", "regularizer": "weight_decay"},
    "simclr": {**_SINGLE, "base_loss": "infonce", "momentum_base": False},
    "simsiam": {**_SINGLE, "base_loss": "mse", "momentum_base": False},
    "byol": {**_SINGLE, "base_loss": "mse", "momentum_base": True},
    "mocov2": {**_SINGLE, "base_loss": "infonce", "momentum_base": True, "ema": 0.999, "temperature": 0.2,
               "queue_size": 4096},
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


def mlp(in_dim: int, hidden: int, out_dim: int, slim_in: bool = False, first_bias: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU-Linear; ``slim_in`` makes the first layer's input follow the backbone's width."""
    first = USLinear(in_dim, hidden, bias=first_bias) if slim_in else nn.Linear(in_dim, hidden, bias=first_bias)
    return nn.Sequential(first, nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


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

    def __init__(self, backbone: USResNet, proj_hidden: int, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(backbone.feature_dim, proj_hidden, proj_dim, slim_in=True)

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
    """Student encoder, heads and (optionally) the momentum encoder and MoCo queue."""

    def __init__(self, cfg: SSLConfig, arch: str = "resnet50", stem: str = "imagenet",
                 width_range: tuple[float, float] = (0.25, 1.0)) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(build_model(arch, stem=stem, num_classes=0, width_range=width_range),
                               cfg.proj_hidden, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim) if cfg.base_loss == "mse" else None
        needs_g = cfg.aux_head == "new" or (cfg.aux_head == "shared" and self.predictor is None)
        self.aux_head = mlp(cfg.proj_dim, cfg.aux_hidden, cfg.proj_dim, first_bias=False) if needs_g else None
        self.momentum_encoder = None
        if cfg.uses_momentum:
            self.momentum_encoder = copy.deepcopy(self.encoder)
            self.momentum_encoder.requires_grad_(False)
        if cfg.queue_size:
            self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.max_width = float(width_range[1])

    @property
    def backbone(self) -> USResNet:
        return self.encoder.backbone

    def _base_head(self, z: torch.Tensor) -> torch.Tensor:
        if self.predictor is not None:
            return self.predictor(z)
        if self.cfg.aux_head == "shared":
            return self.aux_head(z)
        return z

    def _sub_head(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.aux_head == "off":
            return z
        if self.cfg.aux_head == "shared":
            return self._base_head(z)
        return self.aux_head(z)

    def _pairs(self, s1, s2, t1, t2, cross: bool):
        return ((s1, t2), (s2, t1)) if cross else ((s1, t1), (s2, t2))

    def _base_loss(self, h1, h2, z1, z2, k1, k2) -> torch.Tensor:
        cfg = self.cfg
        if cfg.base_loss == "infonce":
            if not cfg.momentum_base:
                return nt_xent(h1, h2, cfg.temperature)
            queue = self.queue.clone() if cfg.queue_size else None
            return 0.5 * (info_nce(h1, k2, cfg.temperature, queue) + info_nce(h2, k1, cfg.temperature, queue))
        t1, t2 = (k1, k2) if cfg.momentum_base else (z1.detach(), z2.detach())
        return 0.5 * (unit_mse(h1, t2) + unit_mse(h2, t1))

    def _distill_loss(self, s1, s2, t1, t2) -> torch.Tensor:
        pairs = self._pairs(s1, s2, t1, t2, self.cfg.distill_view == "cross")
        if self.cfg.distill_loss == "mse":
            return 0.5 * sum(unit_mse(s, t) for s, t in pairs)
        return 0.5 * sum(info_nce(s, t, self.cfg.distill_temperature) for s, t in pairs)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        keys = F.normalize(at_least_fp32(keys), dim=1)[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def train_step(self, x1: torch.Tensor, x2: torch.Tensor, widths: list[float],
                   backward: Callable[[torch.Tensor], None],
                   gather: Callable[[torch.Tensor], torch.Tensor] = _identity,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> StepOutput:
        """One iteration; ``widths[0]`` is the base network. ``gather`` concatenates a tensor over
        processes (with gradient) so losses see the global batch; ``backward`` is called once per width."""
        cfg = self.cfg
        k1 = k2 = None
        if self.momentum_encoder is not None:
            ema_update_(self.momentum_encoder, self.encoder, cfg.ema)
            with torch.no_grad(), autocast():
                self.momentum_encoder.set_width(self.max_width)
                k = self.momentum_encoder(torch.cat([x1, x2]))
            k1, k2 = (gather(at_least_fp32(t)) for t in k.chunk(2))
        views = torch.cat([x1, x2])
        out = StepOutput(0.0, [], [], [])
        z_max: tuple[torch.Tensor, torch.Tensor] | None = None
        try:
            for i, w in enumerate(widths):
                self.encoder.set_width(w)
                with autocast():
                    z = self.encoder(views)
                z1, z2 = (gather(at_least_fp32(t)) for t in z.chunk(2))
                if i == 0:
                    with autocast():
                        h = self._base_head(z)
                    h1, h2 = (gather(at_least_fp32(t)) for t in h.chunk(2))
                    loss = self._base_loss(h1, h2, z1, z2, k1, k2)
                    z_max = (z1.detach(), z2.detach())
                else:
                    with autocast():
                        s = self._sub_head(z)
                    s1, s2 = (gather(at_least_fp32(t)) for t in s.chunk(2))
                    t1, t2 = (k1, k2) if cfg.momentum_sub else z_max
                    loss = self._distill_loss(s1, s2, t1, t2)
                backward(loss)
                out.losses.append(loss.item())
                out.widths.append(float(w))
                out.proj_std.append(projection_std(torch.cat([z1, z2])))
        finally:
            self.encoder.set_width(self.max_width)
        if cfg.queue_size:
            self._enqueue(torch.cat([k1, k2]))
        out.loss = sum(out.losses)
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)
