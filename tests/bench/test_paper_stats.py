"""ftcp.bench.stats: t quantiles, least squares with a slope CI, R², mean CI."""

from __future__ import annotations

import math
import random

import pytest

from ftcp.bench.stats import (
    MomentSums,
    SumStats,
    linear_fit,
    mean_ci,
    t_cdf,
    t_quantile,
)

# two-sided 95% critical values from a printed t table
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 5: 2.570582, 10: 2.228139, 30: 2.042272,
        100: 1.983972, 1000: 1.962339}  # fmt: skip


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_table(df: int) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=2e-6)


def test_t_quantile_limits_and_symmetry() -> None:
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)  # the normal quantile
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7))
    assert t_quantile(0.995, 4) == pytest.approx(4.604095, abs=1e-5)
    for df in (1, 3, 12):
        for t in (-3.0, -0.4, 0.0, 1.1, 5.0):
            assert t_cdf(t, df) + t_cdf(-t, df) == pytest.approx(1.0)
    assert t_cdf(T975[10], 10) == pytest.approx(0.975, abs=1e-7)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_linear_fit_against_a_hand_computation() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    ys = [2.1, 3.9, 6.2, 7.8, 10.1]
    # by hand: mean x 3, mean y 6.02; Sxx = 10; Sxy = 19.9; Syy = 39.708
    slope = 19.9 / 10
    intercept = 6.02 - slope * 3
    sse = 39.708 - slope * 19.9  # = 0.107
    se = math.sqrt(sse / 3 / 10)
    f = linear_fit(xs, ys)
    assert f.n == 5
    assert f.slope == pytest.approx(1.99)
    assert f.intercept == pytest.approx(intercept)
    assert f.slope_se == pytest.approx(se)
    assert f.slope_ci == pytest.approx(3.182446305 * se)  # t(0.975, 3 d.o.f.)
    assert f.r2 == pytest.approx(1 - sse / 39.708)
    assert f.r2 == pytest.approx(0.997305329)


def test_perfect_line_has_zero_ci_and_r2_one() -> None:
    xs = [0.001 * i for i in range(50)]
    f = linear_fit(xs, [1e6 * x + 7 for x in xs])
    assert f.slope == pytest.approx(1e6)
    assert f.slope_ci == pytest.approx(0.0, abs=1e-3)
    assert f.r2 == pytest.approx(1.0)


def test_sum_stats_pool_equals_fit_of_all_points() -> None:
    rng = random.Random(1)
    runs = []
    for _ in range(4):
        xs = sorted(rng.uniform(0, 1) for _ in range(200))
        runs.append((xs, [1.2e6 * x + rng.gauss(0, 3000) for x in xs]))
    pooled = SumStats()
    for xs, ys in runs:
        pooled = pooled.merge(SumStats.of(xs, ys))
    allx = [x for xs, _ in runs for x in xs]
    ally = [y for _, ys in runs for y in ys]
    a, b = pooled.fit(), linear_fit(allx, ally)
    assert a.n == b.n == 800
    assert a.slope == pytest.approx(b.slope, rel=1e-9)
    assert a.slope_ci == pytest.approx(b.slope_ci, rel=1e-6)
    assert a.r2 == pytest.approx(b.r2, rel=1e-9)
    assert SumStats.from_json(pooled.to_json()) == pooled


def test_mean_ci_by_hand() -> None:
    m = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    sd = math.sqrt(2.5)
    assert (m.n, m.mean, m.sd) == (5, 3.0, pytest.approx(sd))
    assert m.ci == pytest.approx(2.776445105 * sd / math.sqrt(5))
    assert m.spread == pytest.approx(1.959964 * sd, rel=1e-6)
    s = MomentSums()
    for v in (1.0, 2.0, 3.0):
        s.add(v)
    t = MomentSums()
    for v in (4.0, 5.0):
        t.add(v)
    pooled = s.merge(t).mean_ci()
    assert pooled.mean == pytest.approx(3.0)
    assert pooled.ci == pytest.approx(m.ci)
    with pytest.raises(ValueError):
        mean_ci([1.0])
