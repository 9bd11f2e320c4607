"""Paired coalition designs shared by the regression and regression-adjusted estimators.

Coalitions are drawn in complementary pairs (S, N minus S): a pair is one sampling unit and costs
two evaluations. Units are grouped in strata by k = min(|S|, n - |S|), k = 1..floor(n/2).

Nested by construction: for a seed, the design is one fixed sequence of units, and a budget of B
evaluations uses its first (B - 2) / 2 units. A larger budget with the same seed therefore extends
a smaller run (every coalition the smaller run evaluated is in the larger design, so a store serves
it), and any prefix is a valid design, which is what lets a run stop early. The sequence has two
independent parts:
- which stratum the t-th unit comes from: seats are handed to strata one at a time by the
  Huntington-Hill apportionment of the size distribution q below (every stratum gets its first
  unit before any gets a second; after that the stratum furthest below its share, by geometric-mean
  rounding, gets the next). Apportionment by a divisor method is house-monotone, so growing the
  prefix never takes a unit away from a stratum. A stratum whose units are all used is full
  ("saturated", known exactly, as in shapiq's border trick) and drops out.
- which unit is the j-th of stratum k: a uniformly random order of the stratum's units, from a
  random stream of its own (seeded from the run's seed and k), so it does not depend on how many
  units the budget takes. Small strata (at most PERMUTE_LIMIT units) are a random permutation of
  the units' ranks, unranked on demand; larger ones are random k-subsets with repeats skipped.
Within a stratum the first m units are thus a uniform sample without replacement, and the prefix is
a stratified sample with known counts m_k: a sampled unit of stratum k stands for count_k / m_k
units. `PairedDesign.q` is m_k / n_sampled, so weights written as q_k * n_sampled give m_k.

The sequence is generated lazily in chunks (`PairedSequence.extend`), so memory and time before
the first evaluation do not depend on the budget; only the units actually evaluated are held.

Size distributions q over strata:
- "leverage": every coalition size gets equal mass (Leverage SHAP: the leverage scores of the
  Shapley regression are equal across sizes);
- "kernel": mass proportional to the Shapley kernel, ~ 1/(k (n - k)) (classic KernelSHAP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import comb

PERMUTE_LIMIT = 1 << 20  # strata this small are a random permutation of their unit ranks (8 MB at most)


def stratum_sizes(n: int) -> np.ndarray:
    return np.arange(1, n // 2 + 1)


def units_in_stratum(n: int, k: int) -> float:
    """Number of complementary pairs whose smaller side has size k (a float: may be astronomic)."""
    total = float(comb(n, k, exact=False))
    return total / 2 if 2 * k == n else total


def total_units(n: int) -> int:
    """Complementary pairs of an n-player game other than (empty, full): 2^(n-1) - 1."""
    return (1 << (n - 1)) - 1


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
    q: np.ndarray  # share of each stratum k (index k-1) among the sampled units (m_k / n_sampled), 0 where saturated
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


def _canonical_units(rows: np.ndarray) -> np.ndarray:
    """Each unit as its stratum's streams hand it: the side of size k = min(|S|, n - |S|), and for
    k = n/2 the side holding player 0."""
    n = rows.shape[1]
    flip = (rows.sum(1) > n - rows.sum(1)) | ((2 * rows.sum(1) == n) & ~rows[:, 0])
    return np.where(flip[:, None], ~rows, rows)


def _unrank(ranks: np.ndarray, k: int, m: int) -> np.ndarray:
    """The k-subsets of range(m) with the given colex ranks, as bool rows [len(ranks), m]."""
    rows = np.zeros((len(ranks), m), dtype=bool)
    left = ranks.astype(np.int64).copy()
    for i in range(k, 0, -1):
        table = np.array([min(math.comb(c, i), 1 << 62) for c in range(m)], dtype=np.int64)  # C(c, i), nondecreasing
        c = np.searchsorted(table, left, side="right") - 1  # the largest c with C(c, i) <= rank
        rows[np.arange(len(ranks)), c] = True
        left -= table[c]
    return rows


class _StratumStream:
    """The units of stratum k in a uniformly random order that depends only on (seed, k)."""

    def __init__(self, n: int, k: int, seed: int, skip: np.ndarray | None = None) -> None:
        """skip: units (canonical S sides) that are already in the design elsewhere; never handed."""
        self.n, self.k = n, k
        self.middle = 2 * k == n  # units: the k-subsets holding player 0
        self.count = math.comb(n - 1, k - 1) if self.middle else math.comb(n, k)
        self.rng = np.random.default_rng([seed, k])
        self.handed = 0
        self._ranks: np.ndarray | None = None
        self._skip = set() if skip is None else {key.tobytes() for key in np.packbits(skip, axis=1)}
        self._seen: set[bytes] = set(self._skip)
        self._buffer = np.zeros((0, n), dtype=bool)
        self._position = 0  # ranks of the permutation used so far (handed + skipped)

    def take(self, count: int) -> np.ndarray:
        """The next `count` units (S sides), bool [count, n]."""
        if count == 0:
            return np.zeros((0, self.n), dtype=bool)
        if self.count <= PERMUTE_LIMIT:
            if self._ranks is None:
                self._ranks = self.rng.permutation(self.count)
            rows = self._unrank_next(count)
        else:
            # Random k-subsets in stream order, repeats skipped. Draws are kept in a buffer rather
            # than discarded, so the j-th unit is the same however the requests are chunked.
            while len(self._buffer) < count:
                drawn = _canonical(_random_subsets(self.rng, self.n, self.k, max(64, 2 * count)), self.k, self.n)
                fresh = []
                for row, key in zip(drawn, np.packbits(drawn, axis=1)):
                    key = key.tobytes()
                    if key not in self._seen:
                        self._seen.add(key)
                        fresh.append(row)
                if fresh:
                    self._buffer = np.concatenate([self._buffer, np.array(fresh)])
            rows, self._buffer = self._buffer[:count], self._buffer[count:]
        self.handed += count
        return rows

    def _unrank_next(self, count: int) -> np.ndarray:
        """The next `count` units of the rank permutation, passing over the skipped ones."""
        kept = []
        while sum(len(r) for r in kept) < count:
            want = count - sum(len(r) for r in kept)
            ranks = self._ranks[self._position : self._position + want]
            self._position += len(ranks)
            if self.middle:
                rows = np.zeros((len(ranks), self.n), dtype=bool)
                rows[:, 0] = True
                rows[:, 1:] = _unrank(ranks, self.k - 1, self.n - 1)
            else:
                rows = _unrank(ranks, self.k, self.n)
            if self._skip:
                rows = rows[[key.tobytes() not in self._skip for key in np.packbits(rows, axis=1)]]
            kept.append(rows)
        return np.concatenate(kept)


class PairedSequence:
    """The nested unit sequence of one (n, seed, distribution); see the module docstring.

    `extend(t)` makes the first t units exist; `design(t)` is the PairedDesign of the first t units.
    """

    CHUNK = 4096  # units generated per step

    def __init__(self, n: int, rng: np.random.Generator, distribution: str, taken: np.ndarray | None = None) -> None:
        """taken: distinct units (S sides, bool rows) already in the design before this sequence (an
        antithetic chain, chains.py): they hold their strata's first seats and are never drawn again,
        so the sequence continues a stratified sample without repeats and ends with every unit."""
        self.n = n
        self.ks = stratum_sizes(n)
        self.counts = np.array([units_in_stratum(n, int(k)) for k in self.ks])
        self.exact_counts = [math.comb(n - 1, int(k) - 1) if 2 * k == n else math.comb(n, int(k)) for k in self.ks]
        self.mass = stratum_mass(n, distribution)
        self.seed = int(rng.integers(2**63))  # the only draw from rng, whatever the budget
        self.taken = None if taken is None else _canonical_units(np.asarray(taken, dtype=bool))
        taken_strata = np.zeros(0, dtype=np.int64) if taken is None else np.minimum(taken.sum(1), n - taken.sum(1))
        self.taken_counts = np.bincount(taken_strata - 1, minlength=len(self.ks)).astype(np.int64)
        self.total = total_units(n) - int(self.taken_counts.sum())
        self.seats = self.taken_counts.copy()  # units handed to each stratum so far (taken ones included)
        self._streams: dict[int, _StratumStream] = {}
        self._first = np.zeros((0, n), dtype=bool)
        self._stratum = np.zeros(0, dtype=np.int64)
        self.length = 0

    # ------------------------------------------------------------------ apportionment
    def _full(self) -> np.ndarray:
        return np.array([s >= c for s, c in zip(self.seats.tolist(), self.exact_counts)], dtype=bool)

    def _next_strata(self, want: int) -> np.ndarray:
        """Stratum indices of the next `want` seats (fewer when every unit is used)."""
        order: list[np.ndarray] = []
        full = self._full()
        # First seats (infinite Huntington-Hill priority): larger mass first, then smaller k.
        fresh = np.flatnonzero((self.seats == 0) & ~full)
        fresh = fresh[np.lexsort((fresh, -self.mass[fresh]))][:want]
        self.seats[fresh] += 1
        order.append(fresh)
        want -= len(fresh)
        if want > 0:
            order.append(self._later_seats(want))
        return np.concatenate(order).astype(np.int64)

    def _later_seats(self, want: int) -> np.ndarray:
        left = np.array([c - s for s, c in zip(self.seats.tolist(), self.exact_counts)], dtype=float)
        live = (left > 0) & (self.seats > 0)
        if not live.any():
            return np.zeros(0, dtype=np.int64)

        def seats_above(p: float) -> np.ndarray:
            # Seat j >= 2 of stratum k has priority mass_k / sqrt(j (j - 1)); it is >= p while
            # j <= (1 + sqrt(1 + 4 (mass_k / p)^2)) / 2.
            top = np.floor((1 + np.sqrt(1 + 4 * (self.mass / p) ** 2)) / 2)
            return np.where(live, np.clip(top - self.seats, 0, left), 0)

        if left[live].sum() <= want:
            extra = np.where(live, left, 0).astype(np.int64)
        else:
            s = self.seats[live].astype(float)
            high = float(np.max(self.mass[live] / np.sqrt((s + 1) * s)))
            low = high / 2
            while seats_above(low).sum() < want:
                low /= 2
            for _ in range(80):  # bisection in log space for the largest threshold with enough seats
                mid = math.sqrt(low * high)
                if seats_above(mid).sum() >= want:
                    low = mid
                else:
                    high = mid
            extra = seats_above(low * (1 - 1e-9)).astype(np.int64)  # a superset of the next `want` seats
        strata = np.repeat(np.arange(len(self.ks)), extra)
        j = np.concatenate([np.arange(s + 1, s + e + 1) for s, e in zip(self.seats, extra)]).astype(float)
        priority = self.mass[strata] / np.sqrt(j * (j - 1))
        chosen = strata[np.lexsort((strata, -priority))][:want]  # ties: smaller k first
        self.seats += np.bincount(chosen, minlength=len(self.ks))
        return chosen

    # ------------------------------------------------------------------ units
    def extend(self, length: int) -> None:
        """Generate units until the sequence has min(length, every unit) of them."""
        length = min(int(length), self.total)
        while self.length < length:
            strata = self._next_strata(min(self.CHUNK, length - self.length))
            rows = np.zeros((len(strata), self.n), dtype=bool)
            for index in np.unique(strata):
                stream = self._streams.get(int(index))
                if stream is None:
                    stream = self._streams[int(index)] = _StratumStream(self.n, int(self.ks[index]), self.seed,
                                                                        self._taken_in(int(self.ks[index])))
                where = np.flatnonzero(strata == index)
                rows[where] = stream.take(len(where))
            self._append(rows, self.ks[strata])

    def _taken_in(self, k: int) -> np.ndarray | None:
        if self.taken is None:
            return None
        sizes = self.taken.sum(1)
        return self.taken[np.minimum(sizes, self.n - sizes) == k]

    def _append(self, rows: np.ndarray, strata: np.ndarray) -> None:
        end = self.length + len(rows)
        if end > len(self._first):  # grow by doubling, so extending stays linear in the units made
            capacity = max(end, 2 * len(self._first))
            first = np.zeros((capacity, self.n), dtype=bool)
            first[: self.length] = self._first[: self.length]
            stratum = np.zeros(capacity, dtype=np.int64)
            stratum[: self.length] = self._stratum[: self.length]
            self._first, self._stratum = first, stratum
        self._first[self.length : end] = rows
        self._stratum[self.length : end] = strata
        self.length = end

    def design(self, length: int | None = None) -> PairedDesign:
        """The design made of the first `length` units (default: all generated so far)."""
        length = self.length if length is None else min(int(length), self.total)
        self.extend(length)
        stratum = self._stratum[:length]
        m = np.bincount(stratum - 1, minlength=len(self.ks)) if length else np.zeros(len(self.ks), dtype=np.int64)
        full = np.array([a + t >= c for a, t, c in zip(m.tolist(), self.taken_counts.tolist(), self.exact_counts)],
                        dtype=bool)
        sampled_strata = ~full & (m > 0)
        n_sampled = int(m[sampled_strata].sum())
        q = np.where(sampled_strata, m / max(n_sampled, 1), 0.0)
        return PairedDesign(
            n=self.n,
            first=self._first[:length],
            stratum=stratum,
            sampled=sampled_strata[stratum - 1] if length else np.zeros(0, dtype=bool),
            saturated_strata=self.ks[full],
            q=q,
            n_sampled=n_sampled,
            stratum_units=self.counts,
        )


def draw_paired_design(n: int, n_units: int, rng: np.random.Generator, distribution: str) -> PairedDesign:
    """A design of at most `n_units` complementary pairs (2 * n_units evaluations): the first
    n_units of the nested sequence, so a larger n_units with the same rng state extends it."""
    return PairedSequence(n, rng, distribution).design(n_units)
