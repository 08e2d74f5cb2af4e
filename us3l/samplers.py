"""Width samplers: which widths train in each iteration (the first one is the base network).

- :class:`DynamicSampler` (US3L): training is split in equal stages, each with its own smallest width;
  a stage whose smallest width is the max trains the max width only, the others the sandwich
  ``[max, U(min_s, max) x (n - 2), min_s]``. The paper's schedule is four quarters with ``min_s``
  stepping from the max down to the range's min (1.0, 0.75, 0.5, 0.25 for [0.25, 1]); iteration ``i``
  of ``T`` is in stage ``floor(S i / T)``, which handles any ``T``.
- :class:`SandwichSampler`: max, ``n - 2`` random widths, min, fixed range (US-Net: ``n = 4``).
- :class:`RandomSampler`: ``n`` random widths, no sandwich rule; the widest one is the base network
  (as in the authors' code when the sandwich rule is off).
- :class:`FixedWidthsSampler`: the same list every iteration (S-Net rows: [1.0, 0.75, 0.5, 0.25]).
- :class:`SingleWidthSampler`: one fixed width (individually trained baselines).

Random widths are drawn from a generator seeded by ``(seed, iteration)``, so every process and every
resumed run samples the same widths without carrying sampler state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SAMPLERS = ("dynamic", "sandwich", "random", "snet", "single")
# Older names kept for command lines and scripts: name -> (sampler, widths per iteration).
SAMPLER_ALIASES = {"usnet": ("sandwich", 4), "sandwich3": ("sandwich", 3)}


def _rng(seed: int, iteration: int) -> random.Random:
    return random.Random(f"widths/{seed}/{iteration}")


def quarter_stages(min_width: float, max_width: float) -> tuple[float, ...]:
    """The paper's dynamic schedule: smallest width per quarter, from the max down to the min."""
    return tuple(max_width - q * (max_width - min_width) / 3 for q in range(4))


@dataclass(frozen=True)
class DynamicSampler:
    """Staged sandwich: stage ``s`` trains ``[max, U x (num - 2), stages[s]]`` (max only if ``stages[s] == max``)."""

    total_iters: int
    min_width: float = 0.25
    max_width: float = 1.0
    seed: int = 0
    num: int = 3
    stages: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            object.__setattr__(self, "stages", quarter_stages(self.min_width, self.max_width))
        bad = [s for s in self.stages if not self.min_width <= s <= self.max_width]
        if bad:
            raise ValueError(f"dynamic stage widths {bad} lie outside the width range "
                             f"[{self.min_width:g}, {self.max_width:g}]")

    def stage(self, iteration: int) -> int:
        """Stage (0-based) that ``iteration`` (0-based) falls in."""
        n = len(self.stages)
        return min(n - 1, n * iteration // self.total_iters)

    def min_width_at(self, iteration: int) -> float:
        """The smallest width trained at ``iteration``."""
        return self.stages[self.stage(iteration)]

    def widths(self, iteration: int) -> list[float]:
        lo = self.min_width_at(iteration)
        if lo >= self.max_width:
            return [self.max_width]
        rng = _rng(self.seed, iteration)
        return [self.max_width, *(rng.uniform(lo, self.max_width) for _ in range(self.num - 2)), lo]


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
class RandomSampler:
    """``num`` uniform widths without the sandwich rule, widest first (it is the base network)."""

    num: int = 3
    min_width: float = 0.25
    max_width: float = 1.0
    seed: int = 0

    def stage(self, iteration: int) -> int:
        return 0

    def min_width_at(self, iteration: int) -> float:
        return min(self.widths(iteration))

    def widths(self, iteration: int) -> list[float]:
        rng = _rng(self.seed, iteration)
        return sorted((rng.uniform(self.min_width, self.max_width) for _ in range(self.num)), reverse=True)


@dataclass(frozen=True)
class FixedWidthsSampler:
    """The same widths every iteration, widest first."""

    fixed: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)

    def stage(self, iteration: int) -> int:
        return 0

    def min_width_at(self, iteration: int) -> float:
        return self.fixed[-1]

    def widths(self, iteration: int) -> list[float]:
        return list(self.fixed)


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


Sampler = DynamicSampler | SandwichSampler | RandomSampler | FixedWidthsSampler | SingleWidthSampler


def evenly_spaced(num: int, min_width: float, max_width: float) -> tuple[float, ...]:
    """``num`` widths from ``max_width`` down to ``min_width`` in equal steps (4 over [0.25, 1]: 1, .75, .5, .25)."""
    return tuple(max_width - i * (max_width - min_width) / (num - 1) for i in range(num))


def build_sampler(name: str, total_iters: int, width_range: tuple[float, float], seed: int = 0,
                  width: float = 1.0, num: int | None = None, stages: tuple[float, ...] = ()) -> Sampler:
    """A sampler by name (see :data:`SAMPLERS`); ``num`` widths per iteration (default 3), ``stages`` the
    dynamic schedule's smallest width per stage (default: the paper's quarters)."""
    if name in SAMPLER_ALIASES:
        name, num = SAMPLER_ALIASES[name]
    num = 3 if num is None else num
    lo, hi = width_range
    if name == "dynamic":
        return DynamicSampler(total_iters, lo, hi, seed, num, tuple(stages))
    if name == "sandwich":
        return SandwichSampler(num, lo, hi, seed)
    if name == "random":
        return RandomSampler(num, lo, hi, seed)
    if name == "snet":
        return FixedWidthsSampler(evenly_spaced(num, lo, hi))
    if name == "single":
        return SingleWidthSampler(width)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS} (or {sorted(SAMPLER_ALIASES)})")


def forward_count(sampler: Sampler, total_iters: int) -> int:
    """Student forwards (one per trained width per iteration) over ``total_iters`` iterations."""
    return sum(len(sampler.widths(i)) for i in range(total_iters))
