"""Task metrics: `metric(logits [c, B, P, vocab], batch) -> [c]`, one value per coalition.

The engine hands a metric the logits of c coalitions at the scored positions only, so every
metric here reduces over (B, P) and keeps the coalition axis. A position takes part when its
target is not -100 (ragged position lists are padded with -100); a batch without targets scores
every position. Each metric carries a `name` and `higher_is_better`, so a game or a report can
turn "damage" into a signed number without knowing the metric.

Metrics that need more than the batch (the counterfactual token of a logit difference, the token
sets of a probability mass, the clean logits of a KL divergence) take it in the constructor. Such a
metric is bound to one batch: it remembers that batch's input ids and refuses another one, because
a counterfactual tensor of the right shape but the wrong batch would silently give nonsense.
"""

from __future__ import annotations


import torch

from probes.errors import ProbeError

IGNORE = -100


class MetricError(ProbeError):
    """A metric was built or called with inputs that do not fit together."""


def _valid(batch, shape_bp) -> torch.Tensor:
    """[B, P] bool: positions that count."""
    if batch.targets is None:
        return torch.ones(shape_bp, dtype=torch.bool)
    return batch.targets != IGNORE


def _check_logits(logits: torch.Tensor, batch) -> None:
    if logits.ndim != 4:
        raise MetricError(f"metrics take logits of shape [coalitions, batch, positions, vocab], got {tuple(logits.shape)}")
    if tuple(logits.shape[1:3]) != tuple(batch.score_positions.shape):
        raise MetricError(f"logits [.., {logits.shape[1]}, {logits.shape[2]}, ..] do not match the batch's "
                          f"score_positions {tuple(batch.score_positions.shape)}")


def _mean_over_valid(per_position: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """per_position [c, B, P], valid [B, P] -> [c]: mean over the valid positions (token-weighted)."""
    valid = valid.to(per_position.device)
    count = valid.sum()
    if count == 0:
        raise MetricError("the batch has no scored position with a target (all targets are -100)")
    return torch.where(valid, per_position, torch.zeros((), dtype=per_position.dtype,
                                                        device=per_position.device)).sum(dim=(1, 2)) / count


def _target_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) for tokens [B, P, K] (ids >= 0) -> [c, B, P, K], without a full log_softmax copy."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    idx = tokens.to(logits.device).unsqueeze(0).expand(logits.shape[0], *tokens.shape)
    return logits.gather(-1, idx) - lse


def _targets_or_fail(batch, metric: str) -> torch.Tensor:
    if batch.targets is None:
        raise MetricError(f"metric {metric!r} needs batch.targets (the expected token per scored position)")
    return batch.targets


class Metric:
    """Base class. Subclasses set `name`, `higher_is_better` and implement `compute`."""

    name: str = "metric"
    higher_is_better: bool = True
    needs_single_token: bool = False  # targets must be one token (the task may not split them)

    def __call__(self, logits: torch.Tensor, batch) -> torch.Tensor:
        _check_logits(logits, batch)
        return self.compute(logits, batch)

    def compute(self, logits: torch.Tensor, batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able identity of the metric (goes into game fingerprints)."""
        return {"name": self.name, "higher_is_better": self.higher_is_better}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, higher_is_better={self.higher_is_better})"


class _BoundMetric(Metric):
    """A metric holding per-example data for one batch; refuses any other batch."""

    def __init__(self, input_ids: torch.Tensor | None):
        self._ids = None if input_ids is None else input_ids.detach().cpu()

    def _check_batch(self, batch) -> None:
        if self._ids is None:
            return
        ids = batch.input_ids.detach().cpu()
        if ids.shape != self._ids.shape or not torch.equal(ids, self._ids):
            raise MetricError(f"metric {self.name!r} was built for another batch (its per-example data belongs "
                              "to the batch it was made from); build it from this batch: task_batch.metric(...)")


class LogProb(Metric):
    """Mean log-probability of the targets over all scored target tokens."""

    name, higher_is_better = "logprob", True

    def compute(self, logits, batch):
        targets = _targets_or_fail(batch, self.name)
        valid = targets != IGNORE
        lp = _target_logprobs(logits, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return _mean_over_valid(lp, valid)


class Loss(LogProb):
    """Mean cross-entropy (negative log-prob) of the targets."""

    name, higher_is_better = "loss", False

    def compute(self, logits, batch):
        return -super().compute(logits, batch)


class Perplexity(LogProb):
    """exp(mean cross-entropy) over all target tokens of the batch."""

    name, higher_is_better = "perplexity", False

    def compute(self, logits, batch):
        return torch.exp(-super().compute(logits, batch))


class Accuracy(Metric):
    """Fraction of scored positions whose arg-max token is the target."""

    name, higher_is_better, needs_single_token = "accuracy", True, True

    def compute(self, logits, batch):
        targets = _targets_or_fail(batch, self.name)
        hit = logits.argmax(dim=-1) == targets.to(logits.device)
        return _mean_over_valid(hit.float(), targets != IGNORE)


class _PairMetric(_BoundMetric):
    """Target token against a per-position counterfactual token ([B, P], -100 = none)."""

    needs_single_token = True

    def __init__(self, counterfactuals: torch.Tensor, input_ids: torch.Tensor | None = None):
        super().__init__(input_ids)
        counterfactuals = torch.as_tensor(counterfactuals, dtype=torch.long)
        if counterfactuals.ndim == 1:
            counterfactuals = counterfactuals[:, None]
        self.counterfactuals = counterfactuals

    def _pair(self, logits, batch):
        self._check_batch(batch)
        targets = _targets_or_fail(batch, self.name)
        if self.counterfactuals.shape != targets.shape:
            raise MetricError(f"counterfactual tokens {tuple(self.counterfactuals.shape)} must match the "
                              f"targets {tuple(targets.shape)}")
        valid = (targets != IGNORE) & (self.counterfactuals != IGNORE)
        both = torch.stack([targets.clamp_min(0), self.counterfactuals.clamp_min(0)], dim=-1)
        picked = logits.float().gather(-1, both.to(logits.device).unsqueeze(0).expand(logits.shape[0], *both.shape))
        return picked[..., 0] - picked[..., 1], valid


class LogitDiff(_PairMetric):
    """Mean of logit(target) - logit(counterfactual), e.g. IO - S in indirect object identification."""

    name, higher_is_better = "logit_diff", True

    def compute(self, logits, batch):
        diff, valid = self._pair(logits, batch)
        return _mean_over_valid(diff, valid)


class PairAccuracy(_PairMetric):
    """Fraction of positions where the target outscores its counterfactual (right vs wrong form)."""

    name, higher_is_better = "pair_accuracy", True

    def compute(self, logits, batch):
        diff, valid = self._pair(logits, batch)
        return _mean_over_valid((diff > 0).float(), valid)


class ProbMass(_BoundMetric):
    """Mean of sum_k weight_k * p(token_k) per position.

    token_ids, weights: [B, P, K] (or [B, K] for one position). Greater-than uses weight +1 on the
    years after the prompt's year and -1 on the years before it; weight 0 pads ragged sets.
    """

    name, higher_is_better = "prob_mass", True

    def __init__(self, token_ids: torch.Tensor, weights: torch.Tensor, input_ids: torch.Tensor | None = None,
                 name: str | None = None):
        super().__init__(input_ids)
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if token_ids.ndim == 2:
            token_ids, weights = token_ids[:, None], weights[:, None]
        if token_ids.shape != weights.shape or token_ids.ndim != 3:
            raise MetricError(f"token_ids {tuple(token_ids.shape)} and weights {tuple(weights.shape)} must both be "
                              "[batch, positions, k]")
        self.token_ids, self.weights = token_ids.clamp_min(0), weights
        if name:
            self.name = name

    def compute(self, logits, batch):
        self._check_batch(batch)
        if self.token_ids.shape[:2] != tuple(batch.score_positions.shape):
            raise MetricError(f"token sets {tuple(self.token_ids.shape[:2])} must match score_positions "
                              f"{tuple(batch.score_positions.shape)}")
        p = _target_logprobs(logits, self.token_ids).exp()
        mass = (p * self.weights.to(p.device)).sum(-1)
        return _mean_over_valid(mass, _valid(batch, self.token_ids.shape[:2]))


class KLDivergence(_BoundMetric):
    """Mean KL(clean || ablated) of the next-token distributions at the scored positions.

    clean: the unablated logits at the same positions, [B, P, vocab]; or a callable
    `clean(batch) -> [B, P, vocab]` (called once, on first use); or an AblationEngine, whose
    all-present coalition gives them. 0 for the full model, larger = further from it.
    """

    name, higher_is_better = "kl", False

    def __init__(self, clean, input_ids: torch.Tensor | None = None):
        super().__init__(input_ids)
        self._source = clean
        self._clean_logprobs: torch.Tensor | None = None
        if isinstance(clean, torch.Tensor):
            self._clean_logprobs = self._normalise(clean)

    @staticmethod
    def _normalise(clean: torch.Tensor) -> torch.Tensor:
        if clean.ndim == 4 and clean.shape[0] == 1:
            clean = clean[0]
        if clean.ndim != 3:
            raise MetricError(f"clean logits must be [batch, positions, vocab], got {tuple(clean.shape)}")
        return torch.log_softmax(clean.detach().float(), dim=-1)

    def _clean(self, batch) -> torch.Tensor:
        if self._clean_logprobs is None:
            source = self._source
            if hasattr(source, "logits") and hasattr(source, "n_players"):  # an AblationEngine
                full = torch.ones(1, source.n_players, dtype=torch.bool)
                clean = source.logits(full, batch)
            elif callable(source):
                clean = source(batch)
            else:
                raise MetricError("KLDivergence(clean=...) takes a tensor of clean logits, a callable batch -> "
                                  f"logits, or an AblationEngine; got {type(source).__name__}")
            self._clean_logprobs = self._normalise(clean)
            if self._ids is None:
                self._ids = batch.input_ids.detach().cpu()
        return self._clean_logprobs

    def compute(self, logits, batch):
        self._check_batch(batch)
        clean = self._clean(batch)
        if clean.shape != logits.shape[1:]:
            raise MetricError(f"clean logits {tuple(clean.shape)} do not match the logits {tuple(logits.shape[1:])}")
        clean = clean.to(logits.device)
        ablated = torch.log_softmax(logits.float(), dim=-1)
        kl = (clean.exp() * (clean - ablated)).sum(-1)
        return _mean_over_valid(kl, _valid(batch, clean.shape[:2]))


# name -> (class, what it needs beyond the batch)
METRICS: dict[str, type[Metric]] = {
    "logprob": LogProb, "loss": Loss, "perplexity": Perplexity, "accuracy": Accuracy,
    "logit_diff": LogitDiff, "pair_accuracy": PairAccuracy, "prob_mass": ProbMass, "kl": KLDivergence,
}


def make_metric(name: str, *, counterfactuals=None, token_ids=None, weights=None, clean=None,
                input_ids=None) -> Metric:
    """Build a metric by name, giving it the per-example data it needs."""
    if isinstance(name, Metric):
        return name
    cls = METRICS.get(name)
    if cls is None:
        raise MetricError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    if issubclass(cls, _PairMetric):
        if counterfactuals is None:
            raise MetricError(f"metric {name!r} needs a counterfactual token per example (the wrong answer); "
                              "this task has none")
        return cls(counterfactuals, input_ids)
    if cls is ProbMass:
        if token_ids is None or weights is None:
            raise MetricError("metric 'prob_mass' needs token sets with weights; this task has none")
        return cls(token_ids, weights, input_ids)
    if cls is KLDivergence:
        if clean is None:
            raise MetricError("metric 'kl' needs the clean (unablated) logits: pass clean=<tensor [B, P, vocab]>, "
                              "a callable batch -> logits, or the AblationEngine")
        return cls(clean, input_ids)
    return cls()


# Step metrics (no gradient) and the smooth metric that measures the same thing, for gradient
# methods (integrated gradients, gate gradients): the one copy of this map.
SMOOTH_METRIC = {"accuracy": "logprob", "pair_accuracy": "logit_diff"}


def smooth_metric(name: str) -> str:
    """The metric a gradient method uses in place of `name` (name itself when it is smooth)."""
    return SMOOTH_METRIC.get(name, name)


def metric_sign(metric) -> float:
    """+1 for a metric where higher is better, -1 where lower is (loss, perplexity, KL): every game
    multiplies its metric by this, so a positive value always means the component helps. A plain
    callable without `higher_is_better` counts as higher-is-better."""
    return 1.0 if getattr(metric, "higher_is_better", True) else -1.0
