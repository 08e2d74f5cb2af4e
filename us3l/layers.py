"""Universally slimmable layers and the width switch.

Each layer keeps its full-width parameters and, at width ``w``, uses the *first*
``make_divisible(C_max * w)`` channels of each side marked slimmable. The stem's RGB input and the
classifier's output stay full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .channels import DIVISOR, check_width, scaled


class _Slimmable:
    """Mixin: a ``width`` attribute set by :func:`set_width`."""

    width: float = 1.0
    divisor: int = DIVISOR

    def _active(self, full: int, slim: bool = True) -> int:
        """Channels of a side whose full count is ``full`` at the current width (``full`` if not slim)."""
        return scaled(full, self.width, self.divisor) if slim else full


class USConv2d(nn.Conv2d, _Slimmable):
    """Conv2d whose input/output channels shrink with the width (first channels kept)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, slim_in: bool = True, slim_out: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.slim_in, self.slim_out = slim_in, slim_out

    def active_channels(self) -> tuple[int, int]:
        """(in, out) channels at the current width."""
        return self._active(self.in_channels, self.slim_in), self._active(self.out_channels, self.slim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout = self.active_channels()
        if x.shape[1] != cin:
            raise RuntimeError(f"USConv2d at width {self.width:g} expects {cin} input channels, got {x.shape[1]}")
        weight = self.weight[:cout, :cin]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class USBatchNorm2d(nn.BatchNorm2d, _Slimmable):
    """BatchNorm shared across widths: the first channels' affine parameters and running statistics.

    Training normalises with batch statistics; running statistics for a width come from
    :func:`us3l.calibrate_bn` (reset, then a cumulative average at that width).
    """

    def active_channels(self) -> int:
        return self._active(self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active_channels()
        if x.shape[1] != c:
            raise RuntimeError(f"USBatchNorm2d at width {self.width:g} expects {c} channels, got {x.shape[1]}")
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c] if self.affine else None,
            self.bias[:c] if self.affine else None,
            use_batch_stats,
            factor,
            self.eps,
        )


class USLinear(nn.Linear, _Slimmable):
    """Linear layer whose input (and optionally output) features shrink with the width."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 slim_in: bool = True, slim_out: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.slim_in, self.slim_out = slim_in, slim_out

    def active_features(self) -> tuple[int, int]:
        return self._active(self.in_features, self.slim_in), self._active(self.out_features, self.slim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fin, fout = self.active_features()
        if x.shape[-1] != fin:
            raise RuntimeError(f"USLinear at width {self.width:g} expects {fin} features, got {x.shape[-1]}")
        bias = self.bias[:fout] if self.bias is not None else None
        return F.linear(x, self.weight[:fout, :fin], bias)


SLIMMABLE = (USConv2d, USBatchNorm2d, USLinear)


def width_range(model: nn.Module) -> tuple[float, float]:
    """The (min, max) width a model supports (``model.width_range``, default (0.25, 1.0))."""
    return tuple(getattr(model, "width_range", (0.25, 1.0)))  # type: ignore[return-value]


def set_width(model: nn.Module, width: float) -> nn.Module:
    """Switch every slimmable layer of ``model`` to ``width`` (validated against ``model.width_range``)."""
    w = check_width(width, *width_range(model), of=" of this model")
    for m in model.modules():
        if isinstance(m, SLIMMABLE):
            m.width = w
    model.width = w  # type: ignore[assignment]
    return model


def get_width(model: nn.Module) -> float:
    """The width ``model`` currently runs at."""
    return float(getattr(model, "width", 1.0))
