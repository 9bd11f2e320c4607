"""Paired coalition designs shared by the regression and regression-adjusted estimators.

Coalitions are drawn in complementary pairs (S, N minus S): a pair is one sampling unit and costs
two evaluations. Units are grouped in strata by k = min(|S|, n - |S|), k = 1..floor(n/2). A
stratum with few units (k = 1 has n of them) is cheaper to enumerate than to sample, so strata
are filled greedily ("saturated", known exactly, as shapiq's border trick and Leverage SHAP's
sampling without replacement both do); the rest of the budget draws units i.i.d. from the
remaining strata with probabilities `q`, and uniformly, without repeats, within a stratum.

Size distributions q over strata:
- "leverage": every coalition size gets equal mass (Leverage SHAP: the leverage scores of the
  Shapley regression are equal across sizes);
- "kernel": mass proportional to the Shapley kernel, ~ 1/(k (n - k)) (classic KernelSHAP).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.special import comb

ENUMERATE_LIMIT = 200_000  # strata this small are drawn from an explicit list of their units


def stratum_sizes(n: int) -> np.ndarray:
    return np.arange(1, n // 2 + 1)


def units_in_stratum(n: int, k: int) -> float:
    """Number of complementary pairs whose smaller side has size k (a float: may be astronomic)."""
    total = float(comb(n, k, exact=False))
    return total / 2 if 2 * k == n else total


def stratum_mass(n: int, distribution: str) -> np.ndarray:
    ks = stratum_sizes(n)
    sizes_in_stratum = np.where(2 * ks == n, 1.0, 2.0)  # sizes k and n-k, or just n/2
    if distribution == "leverage":
        return sizes_in_stratum
    if distribution == "kernel":
        return sizes_in_stratum / (ks * (n - ks))
    raise ValueError(f"unknown size distribution {distribution!r}; use 'leverage' or 'kernel'")


@dataclass
class PairedDesign:
    """Evaluated units: `first` holds S of each pair (its complement is ~S)."""

    n: int
    first: np.ndarray  # bool [n_units, n]
    stratum: np.ndarray  # int [n_units], k of each unit
    sampled: np.ndarray  # bool [n_units], False for units of saturated strata
    saturated_strata: np.ndarray  # ks enumerated completely
    q: np.ndarray  # probability of each stratum k (index k-1) for sampled units, 0 where saturated
    n_sampled: int
    stratum_units: np.ndarray  # float [n // 2], number of units in each stratum k (index k-1)

    def coalitions(self) -> np.ndarray:
        """All coalitions to evaluate: the S of every unit, then every complement."""
        return np.concatenate([self.first, ~self.first])


def _random_subsets(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
    keys = rng.random((count, n))
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (count, 1))
    rows = np.zeros((count, n), dtype=bool)
    np.put_along_axis(rows, chosen, True, axis=1)
    return rows


def _canonical(rows: np.ndarray, k: int, n: int) -> np.ndarray:
    """For k = n/2 a pair is unordered: represent it by the side that holds player 0."""
    if 2 * k == n:
        flip = ~rows[:, 0]
        rows = rows.copy()
        rows[flip] = ~rows[flip]
    return rows


def _enumerate_stratum(n: int, k: int) -> np.ndarray:
    combos = np.array(list(combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    rows = np.zeros((len(combos), n), dtype=bool)
    np.put_along_axis(rows, combos, True, axis=1)
    rows = _canonical(rows, k, n)
    return np.unique(rows, axis=0)


def draw_paired_design(n: int, n_units: int, rng: np.random.Generator, distribution: str) -> PairedDesign:
    """A design of at most `n_units` complementary pairs (2 * n_units evaluations)."""
    ks = stratum_sizes(n)
    counts = np.array([units_in_stratum(n, k) for k in ks])
    mass = stratum_mass(n, distribution)
    # Water-filling: a stratum is saturated when its fair share of the units covers all of it.
    saturated = np.zeros(len(ks), dtype=bool)
    while True:
        free = ~saturated
        left = n_units - counts[saturated].sum()
        if left <= 0 or not free.any():
            break
        share = left * mass[free] / mass[free].sum()
        newly = np.flatnonzero(free)[counts[free] <= share]
        if newly.size == 0:
            break
        # Saturate the cheapest one first and re-share, so the budget is never overrun.
        cheapest = newly[np.argmin(counts[newly])]
        if counts[cheapest] > left:
            break
        saturated[cheapest] = True
    blocks, strata, sampled = [], [], []
    for index in np.flatnonzero(saturated):
        rows = _enumerate_stratum(n, int(ks[index]))
        blocks.append(rows)
        strata.append(np.full(len(rows), ks[index]))
        sampled.append(np.zeros(len(rows), dtype=bool))
    n_sampled = int(n_units - counts[saturated].sum())
    q = np.where(saturated, 0.0, mass)
    if n_sampled > 0 and q.sum() > 0:
        q = q / q.sum()
        per_stratum = np.bincount(rng.choice(len(ks), size=n_sampled, p=q), minlength=len(ks))
        for index in np.flatnonzero(per_stratum):
            k, want = int(ks[index]), int(per_stratum[index])
            rows = _draw_distinct(rng, n, k, want, counts[index])
            blocks.append(rows)
            strata.append(np.full(len(rows), k))
            sampled.append(np.ones(len(rows), dtype=bool))
    else:
        n_sampled, q = 0, np.zeros(len(ks))
    first = np.concatenate(blocks) if blocks else np.zeros((0, n), dtype=bool)
    return PairedDesign(
        n=n,
        first=first,
        stratum=np.concatenate(strata) if strata else np.zeros(0, dtype=int),
        sampled=np.concatenate(sampled) if sampled else np.zeros(0, dtype=bool),
        saturated_strata=ks[saturated],
        q=q,
        n_sampled=int(np.concatenate(sampled).sum()) if sampled else 0,
        stratum_units=counts,
    )


def _draw_distinct(rng: np.random.Generator, n: int, k: int, want: int, available: float) -> np.ndarray:
    """`want` distinct units of stratum k, uniformly (want < available by construction)."""
    if available <= ENUMERATE_LIMIT and want > available / 4:
        everything = _enumerate_stratum(n, k)
        return everything[rng.choice(len(everything), size=want, replace=False)]
    found = np.zeros((0, n), dtype=bool)
    while len(found) < want:
        extra = _canonical(_random_subsets(rng, n, k, 2 * (want - len(found)) + 4), k, n)
        merged = np.concatenate([found, extra])
        _, first_seen = np.unique(merged, axis=0, return_index=True)
        found = merged[np.sort(first_seen)]  # keep draw order so the result depends only on the seed
    return found[:want]
