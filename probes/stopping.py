"""Stopping criteria that compose: `MaxEvaluations(5000) | StandardErrorBelow(0.01)`.

Sampling estimators work in rounds; after each round they build a `Progress` snapshot and ask the
criterion whether to stop. `a | b` stops when either says so, `a & b` only when both do. The
estimator's `budget` is always a hard cap on top of any criterion. Criteria with memory
(RankStable) are reset by the estimator at the start of every run, so one object can be reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.errors import ProbeError


@dataclass(frozen=True)
class Progress:
    """What an estimator knows after a round."""

    n_evaluations: int
    means: np.ndarray
    stderrs: np.ndarray
    round: int


class StoppingCriterion:
    def __call__(self, progress: Progress) -> bool:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget state from a previous run."""

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AnyOf(self, other)

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AllOf(self, other)


class AnyOf(StoppingCriterion):
    def __init__(self, *criteria: StoppingCriterion) -> None:
        self.criteria = criteria

    def __call__(self, progress: Progress) -> bool:
        # Evaluate every criterion (no short-circuit) so stateful ones see every round.
        answers = [criterion(progress) for criterion in self.criteria]
        return any(answers)

    def reset(self) -> None:
        for criterion in self.criteria:
            criterion.reset()

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.criteria))


class AllOf(AnyOf):
    def __call__(self, progress: Progress) -> bool:
        answers = [criterion(progress) for criterion in self.criteria]
        return all(answers)

    def __repr__(self) -> str:
        return " & ".join(map(repr, self.criteria))


class MaxEvaluations(StoppingCriterion):
    def __init__(self, n: int) -> None:
        if n < 1:
            raise ProbeError(f"MaxEvaluations needs a positive count, got {n}")
        self.n = int(n)

    def __call__(self, progress: Progress) -> bool:
        return progress.n_evaluations >= self.n

    def __repr__(self) -> str:
        return f"MaxEvaluations({self.n})"


class StandardErrorBelow(StoppingCriterion):
    """Stop once every player's standard error is below `threshold` (NaN never counts as below)."""

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ProbeError(f"StandardErrorBelow needs a positive threshold, got {threshold}")
        self.threshold = float(threshold)

    def __call__(self, progress: Progress) -> bool:
        stderrs = np.asarray(progress.stderrs)
        return bool(stderrs.size and np.all(np.isfinite(stderrs)) and stderrs.max() < self.threshold)

    def __repr__(self) -> str:
        return f"StandardErrorBelow({self.threshold})"


class RankStable(StoppingCriterion):
    """Stop once the set of top-k players (by mean) is unchanged for `patience` consecutive rounds."""

    def __init__(self, k: int, patience: int = 3) -> None:
        if k < 1 or patience < 1:
            raise ProbeError(f"RankStable needs k >= 1 and patience >= 1, got k={k}, patience={patience}")
        self.k = int(k)
        self.patience = int(patience)
        self.reset()

    def reset(self) -> None:
        self._last: frozenset | None = None
        self._unchanged = 0

    def __call__(self, progress: Progress) -> bool:
        means = np.asarray(progress.means)
        top = frozenset(np.argsort(-means, kind="stable")[: self.k].tolist())
        self._unchanged = self._unchanged + 1 if top == self._last else 0
        self._last = top
        return self._unchanged >= self.patience

    def __repr__(self) -> str:
        return f"RankStable(k={self.k}, patience={self.patience})"
