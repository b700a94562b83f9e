"""Statistics for experiments, from running sums only (no per-outcome storage).

- Fixed-horizon tests: two-proportion z-test (pooled) for binary outcomes, Welch's t-test for
  numeric ones, normal confidence intervals, and the per-arm sample size for a minimum detectable
  effect at a given power.
- The sequential test: mSPRT with a normal mixture (Johari, Pekelis, Walsh, "Always valid
  inference", 2017, the test behind Optimizely's stats engine). Its always-valid p-value is the
  running minimum of 1 / Lambda_n, updated at every outcome, so stopping whenever it drops below
  alpha keeps the false-positive rate at alpha however often anyone looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Student's t from scipy.special, not scipy.stats: the same functions (scipy.stats.t's sf and ppf are
# stdtr and stdtrit), without the second and more that importing scipy.stats adds to every server start.
from scipy.special import stdtr, stdtrit

_NORMAL = NormalDist()


def _norm_ppf(q: float) -> float:
    return _NORMAL.inv_cdf(q)


def _norm_sf2(z: float) -> float:
    """Two-sided normal tail P(|Z| > |z|) (the stdlib is much faster than scipy for scalars)."""
    return math.erfc(abs(z) / math.sqrt(2))


@dataclass(slots=True)
class Moments:
    """Count, mean and sum of squared deviations of a stream (Welford), mergeable and O(1)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 below two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment against control: difference, relative lift, test statistic and two-sided p-value."""

    diff: float
    lift: float | None
    statistic: float
    p_value: float


def confidence_interval(m: Moments, binary: bool, alpha: float) -> tuple[float, float]:
    """Normal interval for the mean (Wald for proportions; t for numeric outcomes)."""
    if m.n < 2:
        return (math.nan, math.nan)
    variance = m.mean * (1 - m.mean) if binary else m.variance
    se = math.sqrt(variance / m.n)
    q = _norm_ppf(1 - alpha / 2) if binary else float(stdtrit(m.n - 1, 1 - alpha / 2))
    return (m.mean - q * se, m.mean + q * se)


def _lift(control: Moments, diff: float) -> float | None:
    return diff / control.mean if control.mean != 0 else None


def two_proportion_z(control: Moments, treatment: Moments) -> Comparison:
    """Pooled two-proportion z-test (equal to the 2x2 chi-square test without continuity correction)."""
    diff = treatment.mean - control.mean
    n1, n2 = control.n, treatment.n
    pooled = (control.mean * n1 + treatment.mean * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return Comparison(diff, _lift(control, diff), 0.0, 1.0)
    z = diff / se
    return Comparison(diff, _lift(control, diff), z, _norm_sf2(z))


def welch_t(control: Moments, treatment: Moments) -> Comparison:
    """Welch's unequal-variance t-test, with the Welch-Satterthwaite degrees of freedom."""
    diff = treatment.mean - control.mean
    a, b = control.variance / control.n, treatment.variance / treatment.n
    if a + b == 0:
        return Comparison(diff, _lift(control, diff), 0.0, 1.0)
    t = diff / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (control.n - 1) + b * b / (treatment.n - 1))
    return Comparison(diff, _lift(control, diff), t, float(2 * stdtr(df, -abs(t))))


def compare(control: Moments, treatment: Moments, binary: bool) -> Comparison | None:
    if control.n < 2 or treatment.n < 2:
        return None
    return two_proportion_z(control, treatment) if binary else welch_t(control, treatment)


def required_per_arm(variance_control: float, variance_treatment: float, mde: float, alpha: float, power: float) -> int:
    """Per-arm n for a two-sided test at `alpha` to find a difference of `mde` with `power`."""
    z = _norm_ppf(1 - alpha / 2) + _norm_ppf(power)
    return math.ceil(z * z * (variance_control + variance_treatment) / (mde * mde))


def required_for(control: Moments, treatment: Moments, binary: bool, mde: float, alpha: float, power: float) -> int | None:
    """Sample size per arm, with variances from the data so far (p(1-p) at p and p + mde when binary)."""
    if control.n < 2:
        return None
    if binary:
        p = min(max(control.mean, 0.0), 1.0)
        q = min(max(p + mde, 0.0), 1.0)
        return required_per_arm(p * (1 - p), q * (1 - q), mde, alpha, power)
    return required_per_arm(control.variance, max(treatment.variance, control.variance), mde, alpha, power)


def msprt_lambda(diff: float, variance_of_diff: float, tau2: float) -> float:
    """Mixture likelihood ratio for H0: diff = 0 with an N(0, tau2) mixture over the effect.

    With V the variance of the estimated difference: sqrt(V / (V + tau2)) * exp(diff^2 tau2 / (2 V (V + tau2))).
    """
    v = variance_of_diff
    if v <= 0:
        return 1.0
    exponent = diff * diff * tau2 / (2 * v * (v + tau2))
    return math.sqrt(v / (v + tau2)) * math.exp(min(exponent, 700.0))


@dataclass(slots=True)
class SequentialTest:
    """mSPRT state for one treatment against control: the always-valid p-value, and when it fell."""

    alpha: float
    tau2: float
    min_samples: int
    p_value: float = 1.0
    decided_at: int | None = None
    """Total outcomes (both arms) when the p-value first fell below alpha."""
    decided_diff: float = 0.0
    """Treatment minus control at that moment: its sign says which arm won."""

    def update(self, control: Moments, treatment: Moments, binary: bool) -> None:
        if self.decided_at is not None or min(control.n, treatment.n) < self.min_samples:
            return
        v = _variance_of_diff(control, treatment, binary)
        lam = msprt_lambda(treatment.mean - control.mean, v, self.tau2)
        self.p_value = min(self.p_value, 1.0 / lam if lam > 0 else 1.0)
        if self.p_value <= self.alpha:
            self.decided_at = control.n + treatment.n
            self.decided_diff = treatment.mean - control.mean

    @property
    def is_decided(self) -> bool:
        return self.decided_at is not None


def _variance_of_diff(control: Moments, treatment: Moments, binary: bool) -> float:
    if binary:
        # Pooled under H0, so two arms with the same rate are judged on one variance.
        n = control.n + treatment.n
        p = (control.mean * control.n + treatment.mean * treatment.n) / n
        return p * (1 - p) * (1 / control.n + 1 / treatment.n)
    return control.variance / control.n + treatment.variance / treatment.n
