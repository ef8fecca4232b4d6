"""The statistics every table and log uses: the few-shot protocol's 95% CI, the t-CI over seeds, paired tests.

A claim's unit is the training seed. Within one seed, the 95% CI over test episodes measures the test sample only:
another seed (or another CPU's rounding, which acts like one) moves a short CPU run by as much as the effects the
add-on papers report. So a comparison of two methods is made per seed on the same test episodes (the mean paired
difference over the episodes), and its 95% CI is the Student-t interval over those per-seed differences
(`compare_seeds`; scipy.stats.ttest_1samp): the training seeds as the unit of replication, as Bouthillier et al.
(2021, "Accounting for Variance in Machine Learning Benchmarks", MLSys) and Colas, Sigaud & Oudeyer (2018, "How
Many Random Seeds?") recommend. A single seed keeps the episode CI, labelled as such, and is never significant.

Torch-free (the report stage runs without torch). Test quantiles and p-values come from scipy.stats, imported
where used: it takes about a second to import, and every training and evaluation job imports this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Z95 = 1.96     # the few-shot protocol's 95% CI: 1.96 * std / sqrt(n) over test episodes (Finn et al. 2017)
MIN_CLAIM_SEEDS = 3   # a finding ("X beats Y") needs at least this many training seeds and a CI over them
SINGLE_SEED = "1 seed: episode CI only"


def ci_span(seeds: int, episodes: int | str) -> str:
    """What a CI spans, as the tables write it: "3 seeds × 600 episodes", or "1 seed: episode CI only"."""
    return SINGLE_SEED if seeds <= 1 else f"{seeds} seeds × {episodes} episodes"


def mean_ci95(x: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and the protocol's 95% CI half-width 1.96 * std / sqrt(n) (sample std, ddof=1); n < 2: CI NaN."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    if a.size == 1:
        return float(a[0]), float("nan")
    return float(a.mean()), float(Z95 * a.std(ddof=1) / math.sqrt(a.size))


def seed_mean_ci95(means: Sequence[float]) -> tuple[float, float]:
    """Mean over seeds and the 95% CI half-width t_{0.975, n-1} * std / sqrt(n) over the seed means."""
    x = np.asarray(means, dtype=float)
    if x.size < 2:
        return (float(x[0]) if x.size else float("nan")), float("nan")
    from scipy import stats as _st
    return float(x.mean()), float(_st.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


@dataclass(frozen=True)
class Paired:
    """Paired comparison of two methods on the same test episodes (difference = a - b)."""
    mean: float
    ci95: float
    n: int
    t: float
    p_t: float
    p_wilcoxon: float


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the differences d: zeros dropped, tie-corrected normal approximation
    without continuity correction (our test sets have >= 600 episodes); 1.0 when every difference is 0."""
    d = np.asarray(d, dtype=float)
    if not np.any(d != 0):
        return 1.0
    from scipy import stats as _st
    return float(_st.wilcoxon(d, zero_method="wilcox", correction=False, method="approx").pvalue)


def paired_test(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Mean difference a - b with the protocol's CI, paired t-test and Wilcoxon signed-rank test (two-sided)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired_test needs two equally long 1-d samples (n >= 2), got {a.shape} and {b.shape}")
    d = a - b
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:     # scipy gives NaN here; a constant nonzero difference is as significant as it gets
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        from scipy import stats as _st
        res = _st.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return Paired(mean=mean, ci95=Z95 * se, n=n, t=t, p_t=p, p_wilcoxon=wilcoxon_p(d))


@dataclass(frozen=True)
class Comparison:
    """A paired comparison a − b of two methods on the same test episodes, over the training seeds both have.

    mean: the mean over seeds of the per-seed mean paired difference; ci95: the half-width of the 95% Student-t
    interval over the per-seed differences (one seed: the episode CI of `paired_test`); p: two-sided p of the
    one-sample t-test of the per-seed differences against 0 (one seed: the episode-paired t-test's, kept for the
    CSV, never a claim); same_sign: the share of seeds whose difference has the sign of `mean` (None for one seed).
    """
    mean: float
    ci95: float
    seeds: int
    episodes: int
    p: float
    per_seed: tuple[float, ...]
    same_sign: float | None
    p_wilcoxon: float = float("nan")     # one seed only: the episode-paired Wilcoxon test (CSV)

    @property
    def span(self) -> str:
        return ci_span(self.seeds, self.episodes)

    @property
    def significant(self) -> bool:
        """At least MIN_CLAIM_SEEDS seeds and a 95% CI over them that excludes 0."""
        return (self.seeds >= MIN_CLAIM_SEEDS and not math.isnan(self.ci95)
                and abs(self.mean) > self.ci95)

    @property
    def same_sign_text(self) -> str:
        """"3/3": seeds whose difference has the mean's sign, of all seeds; "—" for one seed."""
        if self.same_sign is None:
            return "—"
        return f"{round(self.same_sign * self.seeds)}/{self.seeds}"


def compare_seeds(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Comparison:
    """`pairs`: one (a, b) per training seed, a and b the two methods' per-episode scores on the same episodes.
    Per seed the mean paired difference; over seeds their mean, Student-t 95% CI and one-sample t-test."""
    if not pairs:
        raise ValueError("compare_seeds needs at least one seed's pair of per-episode scores")
    arrays = [(np.asarray(a, dtype=float), np.asarray(b, dtype=float)) for a, b in pairs]
    for a, b in arrays:
        if a.shape != b.shape or a.ndim != 1 or a.size < 2:
            raise ValueError(f"compare_seeds needs equally long 1-d samples per seed (n >= 2), "
                             f"got {a.shape} and {b.shape}")
    episodes = int(arrays[0][0].size)
    if len(arrays) == 1:
        p = paired_test(*arrays[0])
        return Comparison(mean=p.mean, ci95=p.ci95, seeds=1, episodes=episodes, p=p.p_t, per_seed=(p.mean,),
                          same_sign=None, p_wilcoxon=p.p_wilcoxon)
    d = np.array([float((a - b).mean()) for a, b in arrays])
    mean = float(d.mean())
    if float(d.std(ddof=1)) == 0.0:     # scipy gives NaN: every seed moved by exactly the same amount
        half, p = 0.0, (1.0 if mean == 0.0 else 0.0)
    else:
        from scipy import stats as _st
        res = _st.ttest_1samp(d, 0.0)
        lo, hi = res.confidence_interval(0.95)
        half, p = float(hi - lo) / 2.0, float(res.pvalue)
    sign = np.sign(mean)
    return Comparison(mean=mean, ci95=half, seeds=int(d.size), episodes=episodes, p=p,
                      per_seed=tuple(float(x) for x in d), same_sign=float(np.mean(np.sign(d) == sign)))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network
    Representations Revisited", Eq. 5) of two representations of the same n examples, x (n, d1) and y (n, d2):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred x, y. 1 for identical representations (and any
    isotropic scaling or orthogonal transform of one), 0 for unrelated ones."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"CKA needs the same n >= 2 examples in both representations, got {len(x)} and {len(y)}")
    x, y = x - x.mean(0), y - y.mean(0)
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denom) if denom > 0 else float("nan")
