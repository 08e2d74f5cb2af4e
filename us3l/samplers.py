"""Width samplers: which widths train in each iteration (the first one is the base network).

- :class:`DynamicSampler` (US3L): iterations are split in four quarters (iteration ``i`` of ``T`` is in
  quarter ``floor(4 i / T)``, which handles any ``T``); the first trains the max width only, quarter
  ``q`` >= 1 trains the sandwich ``[max, U(min_q, max), min_q]`` with ``min_q`` stepping from ``max``
  down to the range's min (0.75, 0.5, 0.25 for [0.25, 1]).
- :class:`SandwichSampler`: max, ``num - 2`` random widths, min, fixed range (US-Net: ``num = 4``).
- :class:`SingleWidthSampler`: one fixed width (individually trained baselines).

Random widths are drawn from a generator seeded by ``(seed, iteration)``, so every process and every
resumed run samples the same widths without carrying sampler state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def _rng(seed: int, iteration: int) -> random.Random:
    return random.Random(f"widths/{seed}/{iteration}")


@dataclass(frozen=True)
class DynamicSampler:
    """US3L dynamic sampling: max width only in the first quarter, then a shrinking-min sandwich of 3."""

    total_iters: int
    min_width: float = 0.25
    max_width: float = 1.0
    seed: int = 0

    def stage(self, iteration: int) -> int:
        """Quarter (0-3) that ``iteration`` (0-based) falls in."""
        return min(3, 4 * iteration // self.total_iters)

    def min_width_at(self, iteration: int) -> float:
        """The smallest width trained at ``iteration``."""
        return self.max_width - self.stage(iteration) * (self.max_width - self.min_width) / 3

    def widths(self, iteration: int) -> list[float]:
        stage = self.stage(iteration)
        if stage == 0:
            return [self.max_width]
        lo = self.min_width_at(iteration)
        return [self.max_width, _rng(self.seed, iteration).uniform(lo, self.max_width), lo]


@dataclass(frozen=True)
class SandwichSampler:
    """Sandwich rule over a fixed range: ``[max, U, ..., U, min]`` with ``num`` widths."""

    num: int = 4
    min_width: float = 0.25
    max_width: float = 1.0
    seed: int = 0

    def stage(self, iteration: int) -> int:
        return 0

    def min_width_at(self, iteration: int) -> float:
        return self.min_width

    def widths(self, iteration: int) -> list[float]:
        rng = _rng(self.seed, iteration)
        middle = [rng.uniform(self.min_width, self.max_width) for _ in range(self.num - 2)]
        return [self.max_width, *middle, self.min_width]


@dataclass(frozen=True)
class SingleWidthSampler:
    """Always the same single width."""

    width: float = 1.0

    def stage(self, iteration: int) -> int:
        return 0

    def min_width_at(self, iteration: int) -> float:
        return self.width

    def widths(self, iteration: int) -> list[float]:
        return [self.width]


Sampler = DynamicSampler | SandwichSampler | SingleWidthSampler
SAMPLERS = ("dynamic", "usnet", "sandwich3", "single")


def build_sampler(name: str, total_iters: int, width_range: tuple[float, float], seed: int = 0,
                  width: float = 1.0) -> Sampler:
    """A sampler by name: ``dynamic`` (US3L), ``usnet`` (sandwich of 4), ``sandwich3``, ``single``."""
    lo, hi = width_range
    if name == "dynamic":
        return DynamicSampler(total_iters, lo, hi, seed)
    if name == "usnet":
        return SandwichSampler(4, lo, hi, seed)
    if name == "sandwich3":
        return SandwichSampler(3, lo, hi, seed)
    if name == "single":
        return SingleWidthSampler(width)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")


def forward_count(sampler: Sampler, total_iters: int) -> int:
    """Student forwards (one per trained width per iteration) over ``total_iters`` iterations."""
    return sum(len(sampler.widths(i)) for i in range(total_iters))
