"""The statistics every table and log uses: the few-shot protocol's 95% CI, the t-CI over seeds, paired tests.

Torch-free (the report stage runs without torch). Test quantiles and p-values come from scipy.stats, imported
where used: it takes about a second to import, and every training and evaluation job imports this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Z95 = 1.96     # the few-shot protocol's 95% CI: 1.96 * std / sqrt(n) over test episodes (Finn et al. 2017)


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
