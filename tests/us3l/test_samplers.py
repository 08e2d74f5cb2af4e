"""Width samplers: US3L's quarter schedule for any T, sandwich sizes, forward counts."""

from __future__ import annotations

import pytest

from us3l.samplers import (
    DynamicSampler,
    RandomSampler,
    SandwichSampler,
    SingleWidthSampler,
    build_sampler,
    forward_count,
)


def _reference_min_widths(total: int) -> list[float]:
    """Iteration i of T lies in quarter floor(4i / T); quarters train min 1.0, 0.75, 0.5, 0.25."""
    return [[1.0, 0.75, 0.5, 0.25][4 * i // total] for i in range(total)]


@pytest.mark.parametrize("total, quarter_sizes", [(7, [2, 2, 2, 1]), (8, [2, 2, 2, 2]), (401, [101, 100, 100, 100])])
def test_dynamic_schedule(total, quarter_sizes):
    s = DynamicSampler(total, 0.25, 1.0, seed=1)
    mins = [s.min_width_at(i) for i in range(total)]
    assert mins == _reference_min_widths(total)
    assert [mins.count(m) for m in (1.0, 0.75, 0.5, 0.25)] == quarter_sizes
    for i in range(total):
        w = s.widths(i)
        assert min(w) == mins[i] and w[0] == 1.0
        if mins[i] == 1.0:
            assert w == [1.0]
        else:
            assert len(w) == 3 and w[2] == mins[i] and mins[i] <= w[1] <= 1.0
    assert forward_count(s, total) == quarter_sizes[0] + 3 * sum(quarter_sizes[1:])


def test_forward_counts_two_and_a_half_vs_four():
    t = 400
    assert forward_count(build_sampler("dynamic", t, (0.25, 1.0)), t) == 2.5 * t
    assert forward_count(build_sampler("sandwich", t, (0.25, 1.0), num=4), t) == 4 * t
    assert forward_count(build_sampler("usnet", t, (0.25, 1.0)), t) == 4 * t  # the older name
    assert forward_count(build_sampler("sandwich", t, (0.25, 1.0)), t) == 3 * t
    assert forward_count(build_sampler("single", t, (0.5, 0.5), width=0.5), t) == t


def test_sandwich_and_determinism():
    s = SandwichSampler(4, 0.25, 1.0, seed=3)
    w = s.widths(10)
    assert len(w) == 4 and w[0] == 1.0 and w[-1] == 0.25 and all(0.25 <= x <= 1.0 for x in w)
    assert s.widths(10) == w and SandwichSampler(4, 0.25, 1.0, seed=3).widths(10) == w
    assert SandwichSampler(4, 0.25, 1.0, seed=4).widths(10) != w
    assert SingleWidthSampler(0.5).widths(3) == [0.5]
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("bogus", 10, (0.25, 1.0))


def test_dynamic_respects_range():
    s = DynamicSampler(8, 0.4, 1.0)
    assert [s.min_width_at(i) for i in (0, 2, 4, 6)] == pytest.approx([1.0, 0.8, 0.6, 0.4])


def test_random_sampler_has_no_sandwich_rule():
    s = RandomSampler(3, 0.25, 1.0, seed=0)
    lists = [s.widths(i) for i in range(50)]
    assert all(len(w) == 3 and w == sorted(w, reverse=True) and all(0.25 <= x <= 1.0 for x in w) for w in lists)
    assert not any(1.0 in w or 0.25 in w for w in lists)  # neither the max nor the min is forced
    assert s.min_width_at(7) == min(lists[7])


def test_snet_trains_the_fixed_widths():
    s = build_sampler("snet", 10, (0.25, 1.0), num=4)
    assert [s.widths(i) for i in (0, 9)] == [[1.0, 0.75, 0.5, 0.25]] * 2


@pytest.mark.parametrize("stages, mins", [
    ((0.25,), [0.25] * 8),  # no schedule: the full range from the start
    ((1.0, 0.25), [1.0] * 4 + [0.25] * 4),  # max only for the first half
    ((0.25, 0.5, 0.75, 1.0), [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]),  # reversed
])
def test_dynamic_stages_are_configurable(stages, mins):
    s = build_sampler("dynamic", 8, (0.25, 1.0), stages=stages)
    assert [s.min_width_at(i) for i in range(8)] == mins
    assert all((s.widths(i) == [1.0]) == (mins[i] == 1.0) for i in range(8))
    with pytest.raises(ValueError, match="outside the width range"):
        build_sampler("dynamic", 8, (0.5, 1.0), stages=(1.0, 0.25))


def test_dynamic_with_four_widths():
    s = DynamicSampler(8, 0.25, 1.0, num=4)
    assert [len(s.widths(i)) for i in range(8)] == [1, 1, 4, 4, 4, 4, 4, 4]
