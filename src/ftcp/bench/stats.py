"""Small statistics for the paper benchmark: least squares with a slope CI, mean CI.

No scipy: Student's t quantile is computed here from the regularized incomplete
beta function (Lentz's continued fraction, as in Numerical Recipes `betacf`)
and a bisection on the CDF; it matches published t tables to better than 1e-6.

`SumStats` keeps the sufficient statistics of a simple linear regression
(n, Σx, Σy, Σx², Σxy, Σy²), so a fit over several runs pooled together can be
recomputed exactly from per-run sums (that is what `results.json` stores).
Sums are kept about a fixed origin chosen by the caller (the analysis uses
time from each run's first data segment and stream-relative bytes), which is
enough to keep the cancellation error negligible for the sizes used here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "LinearFit",
    "MeanCI",
    "MomentSums",
    "SumStats",
    "linear_fit",
    "mean_ci",
    "t_cdf",
    "t_quantile",
]


# --- Student's t --------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t (e.g. p=0.975 for a two-sided 95% interval)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _t_half(confidence: float, df: float) -> float:
    return t_quantile(0.5 + confidence / 2.0, df)


# --- regression -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinearFit:
    """y = intercept + slope * x, with the slope's standard error and CI half-width."""

    n: int
    slope: float
    intercept: float
    slope_se: float
    slope_ci: float  # half-width of the `confidence` interval of the slope
    r2: float
    confidence: float = 0.95

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(slots=True)
class SumStats:
    """Sufficient statistics of a simple linear regression; add points or merge sums."""

    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.syy += y * y

    def merge(self, other: SumStats) -> SumStats:
        return SumStats(
            self.n + other.n,
            self.sx + other.sx,
            self.sy + other.sy,
            self.sxx + other.sxx,
            self.sxy + other.sxy,
            self.syy + other.syy,
        )

    @classmethod
    def of(cls, xs: Iterable[float], ys: Iterable[float]) -> SumStats:
        s = cls()
        for x, y in zip(xs, ys, strict=True):
            s.add(x, y)
        return s

    def fit(self, confidence: float = 0.95) -> LinearFit:
        n = self.n
        if n < 3:
            raise ValueError(f"a fit with a CI needs at least 3 points, got {n}")
        cxx = self.sxx - self.sx * self.sx / n
        cxy = self.sxy - self.sx * self.sy / n
        cyy = self.syy - self.sy * self.sy / n
        if cxx <= 0:
            raise ValueError("all x values are equal: the slope is undefined")
        slope = cxy / cxx
        intercept = (self.sy - slope * self.sx) / n
        sse = max(0.0, cyy - slope * cxy)
        se = math.sqrt(sse / (n - 2) / cxx)
        r2 = 1.0 - sse / cyy if cyy > 0 else 1.0
        return LinearFit(n, slope, intercept, se, _t_half(confidence, n - 2) * se, r2, confidence)

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SumStats:
        return cls(int(d["n"]), d["sx"], d["sy"], d["sxx"], d["sxy"], d["syy"])


def linear_fit(xs: Sequence[float], ys: Sequence[float], confidence: float = 0.95) -> LinearFit:
    """Ordinary least squares of `ys` on `xs` (two-pass, numerically careful)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError("xs and ys differ in length")
    if n < 3:
        raise ValueError(f"a fit with a CI needs at least 3 points, got {n}")
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    cxx = math.fsum((x - mx) ** 2 for x in xs)
    cxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    cyy = math.fsum((y - my) ** 2 for y in ys)
    if cxx <= 0:
        raise ValueError("all x values are equal: the slope is undefined")
    slope = cxy / cxx
    intercept = my - slope * mx
    sse = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(sse / (n - 2) / cxx)
    r2 = 1.0 - sse / cyy if cyy > 0 else 1.0
    return LinearFit(n, slope, intercept, se, _t_half(confidence, n - 2) * se, r2, confidence)


# --- means ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeanCI:
    """Sample mean, sample standard deviation, and the half-width of the mean's CI."""

    n: int
    mean: float
    sd: float
    ci: float  # t(n-1) * sd / sqrt(n): the confidence interval of the mean
    spread: float  # 1.96 * sd: where 95% of individual samples fall (normal approx.)
    confidence: float = 0.95

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(slots=True)
class MomentSums:
    """n, Σv, Σv² of a sample, mergeable across runs."""

    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, v: float) -> None:
        self.n += 1
        self.s += v
        self.ss += v * v

    def merge(self, other: MomentSums) -> MomentSums:
        return MomentSums(self.n + other.n, self.s + other.s, self.ss + other.ss)

    def mean_ci(self, confidence: float = 0.95) -> MeanCI:
        n = self.n
        if n < 2:
            raise ValueError(f"a mean with a CI needs at least 2 samples, got {n}")
        mean = self.s / n
        var = max(0.0, (self.ss - self.s * self.s / n) / (n - 1))
        sd = math.sqrt(var)
        z = _t_half(confidence, 1e9)  # normal quantile
        return MeanCI(
            n, mean, sd, _t_half(confidence, n - 1) * sd / math.sqrt(n), z * sd, confidence
        )

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> MomentSums:
        return cls(int(d["n"]), d["s"], d["ss"])


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and its Student-t confidence interval (two-pass)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a mean with a CI needs at least 2 samples, got {n}")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    z = _t_half(confidence, 1e9)
    return MeanCI(n, mean, sd, _t_half(confidence, n - 1) * sd / math.sqrt(n), z * sd, confidence)
