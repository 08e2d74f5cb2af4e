"""Width samplers: US3L's quarter schedule for any T, sandwich sizes, forward counts."""

from __future__ import annotations

import pytest

from us3l.samplers import DynamicSampler, SandwichSampler, SingleWidthSampler, build_sampler, forward_count


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
    assert forward_count(build_sampler("usnet", t, (0.25, 1.0)), t) == 4 * t
    assert forward_count(build_sampler("sandwich3", t, (0.25, 1.0)), t) == 3 * t
    assert forward_count(build_sampler("single", t, (0.5, 0.5), width=0.5), t) == t


def test_sandwich_and_determinism():
    s = SandwichSampler(4, 0.25, 1.0, seed=3)
    w = s.widths(10)
    assert len(w) == 4 and w[0] == 1.0 and w[-1] == 0.25 and all(0.25 <= x <= 1.0 for x in w)
    assert s.widths(10) == w and SandwichSampler(4, 0.25, 1.0, seed=3).widths(10) == w
    assert SandwichSampler(4, 0.25, 1.0, seed=4).widths(10) != w
    assert SingleWidthSampler(0.5).widths(3) == [0.5]
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("random", 10, (0.25, 1.0))


def test_dynamic_respects_range():
    s = DynamicSampler(8, 0.4, 1.0)
    assert [s.min_width_at(i) for i in (0, 2, 4, 6)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
