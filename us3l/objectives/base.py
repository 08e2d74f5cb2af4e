"""The base-objective registry, the :class:`Objective` interface and the MLP heads are built from.

A base objective is the loss of the base network (the widest trained width). It owns its heads (a
predictor after the projector, built by :meth:`Objective.build_predictor`) and any state (buffers such
as MoCo's queue), and scores one step's outputs. The US3L switches (distillation, auxiliary head, width
sampling, momentum targets) stay in :class:`us3l.ssl.SSLConfig` and apply over whichever is selected.

A new objective is one file with a class decorated ``@register("name")`` plus its import line in
``us3l/objectives/__init__.py``; ``base_loss=name`` then selects it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import nn

from ..layers import USLinear

if TYPE_CHECKING:
    from ..ssl import SSLConfig, SSLModel

Pair = tuple[torch.Tensor, torch.Tensor]
"""The two views' rows of one output (N x D each)."""


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, slim_in: bool = False, first_bias: bool = True,
        out_bn: bool = False) -> nn.Sequential:
    """``layers`` Linear layers with BN-ReLU between them (and a BN without affine after the last when
    ``out_bn``); ``slim_in`` makes the first layer's input follow the backbone's width."""
    first = USLinear(in_dim, hidden, bias=first_bias) if slim_in else nn.Linear(in_dim, hidden, bias=first_bias)
    mods: list[nn.Module] = [first, nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    for _ in range(layers - 2):
        mods += [nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    mods.append(nn.Linear(hidden, out_dim))
    if out_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class Objective(ABC):
    """One base loss over the two views' head outputs ``h``, projections ``z`` and momentum projections ``k``.

    ``k`` is the momentum encoder's output (at the student's width) when ``momentum_base`` is set, else
    ``None``; an objective that needs it says so in :meth:`check`.
    """

    name: ClassVar[str]
    """The ``base_loss`` value that selects this objective (set by :func:`register`)."""
    has_predictor: ClassVar[bool] = False
    """Whether a predictor follows the projector for this loss (and, with ``aux_head=shared``, for sub-networks)."""

    def __init__(self, cfg: SSLConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:
        """Raise ``ValueError`` (one line, naming the fix) for switches this objective cannot run with."""
        if self.cfg.queue_size:
            raise ValueError("queue_size > 0 (MoCo) needs base_loss=infonce_qk and momentum_base=true")

    def describe(self) -> tuple[str, str]:
        """The loss and its target in words: :meth:`SSLConfig.terms`'s ``base`` and ``base_target``."""
        return self.name, "momentum, other view" if self.cfg.momentum_base else "other view (in-batch)"

    def build_predictor(self) -> nn.Module | None:
        """The predictor head (built right after the encoder, so parameter order and init are fixed)."""
        cfg = self.cfg
        return mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, first_bias=False) if self.has_predictor else None

    def build_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors the model registers as buffers under these names, after its encoders and heads."""
        return {}

    @abstractmethod
    def loss(self, h: Pair, z: Pair, k: Pair | None, model: SSLModel) -> torch.Tensor:
        """The loss of one network; ``model`` holds the buffers of :meth:`build_buffers`."""

    def after_step(self, k: Pair | None, model: SSLModel) -> None:
        """Called once per iteration with the full-width momentum projections (``None`` without a momentum
        encoder), after every width's backward; nothing to update by default."""
        return None


ObjectiveType = TypeVar("ObjectiveType", bound=type[Objective])
OBJECTIVES: dict[str, type[Objective]] = {}
"""Registered base objectives by ``base_loss`` name, in registration order."""


def register(name: str) -> Callable[[ObjectiveType], ObjectiveType]:
    """Class decorator: make an :class:`Objective` selectable as ``base_loss=name`` (each name once)."""
    def add(cls: ObjectiveType) -> ObjectiveType:
        if name in OBJECTIVES:
            raise ValueError(f"base objective {name!r} is already registered by {OBJECTIVES[name].__qualname__}")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls
    return add


def get_objective(name: str) -> type[Objective]:
    """The objective class registered as ``name``; a one-line ``ValueError`` listing the known ones otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown base objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
