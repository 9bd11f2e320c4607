"""Shapley values of every attention head on a task: `head_values(model, task) -> HeadValues`.

    hv = head_values("smollm2-135m", "induction", budget=2700, seed=0, store="runs/induction")
    hv.matrix            # [layers x heads] means (NaN where a layer has fewer heads)
    hv.harmful(0.95)     # heads whose whole confidence interval lies below 0
    hv.save("induction.json"); HeadValues.load("induction.json", model="smollm2-135m")

The game is `probes.model_game` over the model's heads (coalition = heads kept, the others ablated
with `mode`), so every adapter family works, evaluations stream to `store` and a rerun resumes.
A values file remembers the game's fingerprint (model digest, task batch, metric, ablation);
loading it against another model raises FingerprintMismatchError instead of mislabelling heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any, Callable

import numpy as np

from probes.errors import FingerprintMismatchError, ProbeError
from probes.estimators import DEFAULT_ESTIMATOR, estimate
from probes.model_game import is_legacy_digest, model_digest, model_game
from probes.values import Values
from surgery.batch import TokenBatch
from surgery.components import parse_head_name
from surgery.loading import LoadedModel, load

# Budget when none is given: ten evaluations per head (the budget the default estimator was chosen at).
DEFAULT_BUDGET_PER_PLAYER = 10
# Estimators whose design fixes the number of evaluations (no budget needed).
FIXED_DESIGN = ("exact", "sliding_window", "neighbourhood")


@dataclass(frozen=True)
class HarmfulHead:
    """A head whose removal helps the task: the whole confidence interval lies below 0."""

    name: str
    mean: float
    low: float
    high: float
    confidence: float

    def as_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "mean": self.mean, "low": self.low, "high": self.high,
                "confidence": self.confidence}


class HeadValues(Values):
    """`Values` over heads named `L{layer}.H{head}`, with a layer x head view.

    details['grid'] records the model's head count per layer, so the matrix keeps its shape even for
    pruned models whose layers have different head counts (missing cells are NaN).
    """

    # ------------------------------------------------------------------ views
    @property
    def heads_per_layer(self) -> list[int]:
        grid = self.details.get("grid")
        if grid:
            return [int(h) for h in grid]
        matrix = Values.as_matrix(self)
        return [int(np.isfinite(row).sum()) for row in matrix]

    @property
    def n_layers(self) -> int:
        return len(self.heads_per_layer)

    @property
    def n_heads(self) -> int:
        return max(self.heads_per_layer)

    def as_matrix(self, n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
        return Values.as_matrix(self, n_layers or self.n_layers, n_heads or self.n_heads)

    @property
    def matrix(self) -> np.ndarray:
        """[layers x heads] Shapley values."""
        return self.as_matrix()

    @property
    def stderr_matrix(self) -> np.ndarray:
        """[layers x heads] standard errors of the estimator (0 for exact)."""
        return Values.as_matrix(_with_means(self, self.stderrs), self.n_layers, self.n_heads)

    # ------------------------------------------------------------------ harmful heads
    def intervals(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided normal confidence intervals (low, high) per head; NaN where the stderr is unknown."""
        z = _z(confidence)
        return self.means - z * self.stderrs, self.means + z * self.stderrs

    def harmful(self, confidence: float = 0.95) -> list[HarmfulHead]:
        """Heads whose upper confidence bound is below 0 (most harmful first).

        A head without an interval is never listed: nothing can be claimed for it. That is a head with
        an unknown standard error (NaN), or with stderr 0 from a method that is not exact (sliding
        window, neighbourhood). With exact values (stderr 0) the interval is the point, so every
        negative head is listed.
        """
        low, high = self.intervals(confidence)
        known = self.has_interval()
        found = [HarmfulHead(name, float(m), float(lo), float(hi), confidence)
                 for name, m, lo, hi, ok in zip(self.names, self.means, low, high, known) if ok and hi < 0]
        return sorted(found, key=lambda h: h.mean)

    # ------------------------------------------------------------------ identity
    def check_model(self, model) -> None:
        """Raise FingerprintMismatchError unless these values were computed on `model`'s weights."""
        loaded = load(model)
        digest = model_digest(loaded)
        mine = self.fingerprint.get("model_digest")
        if mine is None:
            raise FingerprintMismatchError("these head values carry no model fingerprint, so they cannot be "
                                           f"checked against {loaded.source!r}; recompute them with head_values()")
        if is_legacy_digest(mine):
            raise FingerprintMismatchError(
                f"these head values carry a model digest of an older scheme ({mine}) that cannot see the order of "
                f"heads, so they cannot be checked against {loaded.source!r}; recompute them with head_values()")
        if mine != digest:
            raise FingerprintMismatchError(
                f"these head values were computed on model {self.fingerprint.get('model')!r} (digest {mine}), "
                f"not on {loaded.source!r} (digest {digest}); head names would point at other weights. "
                "Recompute the values for this model."
            )
        grid = self.details.get("grid")
        if grid and list(grid) != list(loaded.components.n_heads):
            raise FingerprintMismatchError(f"these head values have heads per layer {grid}, the model has "
                                           f"{loaded.components.n_heads}")

    @classmethod
    def load(cls, path: str | PathLike, *, model=None, expected_fingerprint: dict | None = None) -> HeadValues:
        """Read a values file; with `model`, refuse values computed on any other model's weights."""
        values = super().load(path, expected_fingerprint=expected_fingerprint)
        if model is not None:
            try:
                values.check_model(model)
            except FingerprintMismatchError as error:
                raise FingerprintMismatchError(f"{path}: {error}") from None
        return values

    @classmethod
    def from_values(cls, values: Values, heads_per_layer: list[int] | None = None) -> HeadValues:
        details = dict(values.details)
        if heads_per_layer is not None:
            details["grid"] = [int(h) for h in heads_per_layer]
        out = cls(names=list(values.names), means=values.means, stderrs=values.stderrs,
                  n_evaluations=values.n_evaluations, estimator=values.estimator, settings=dict(values.settings),
                  seed=values.seed, fingerprint=dict(values.fingerprint), empty_value=values.empty_value,
                  full_value=values.full_value, details=details)
        Values.as_matrix(out)  # names must be heads
        return out

    # ------------------------------------------------------------------ plots
    def heatmap(self, ax=None, *, n_layers: int | None = None, n_heads: int | None = None, cmap: str = "RdBu",
                confidence: float | None = 0.95):
        """Layers x heads heatmap centred at 0; harmful heads (at `confidence`) are boxed."""
        ax = super().heatmap(ax, n_layers=n_layers or self.n_layers, n_heads=n_heads or self.n_heads, cmap=cmap)
        if confidence is not None:
            from matplotlib.patches import Rectangle

            for h in self.harmful(confidence):
                layer, head = parse_head_name(h.name)
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.2))
        task = self.fingerprint.get("task")
        if task:
            ax.set_title(f"{task}: {ax.get_title()}")
        return ax

    def __repr__(self) -> str:
        top = ", ".join(f"{n}={v:.3g}" for n, v in self.top_k(3))
        return (f"HeadValues({self.fingerprint.get('task', '?')}, {self.n_layers}x{self.n_heads} heads, "
                f"{self.estimator}, {self.n_evaluations} evaluations, top: {top})")


def head_values(model, task, estimator: str | None = None, budget: int | None = None, seed: int | None = 0,
                store: str | PathLike | None = None, n_examples: int | None = None, mode: str = "zero", *,
                metric: str | Callable | None = None, tokenizer=None, task_seed: int = 0, max_rows: int = 64,
                progress: Callable[[int], None] | None = None, game_builder: Callable | None = None,
                **settings: Any) -> HeadValues:
    """Shapley value of every head of `model` on `task`.

    model:     anything `surgery.load` takes (name, path, transformers model, LoadedModel).
    task:      a built-in task name, a `Task`, a ready `TaskBatch`, or `(TokenBatch, metric)` for
               models without a tokenizer (metric(logits [c,B,P,V], batch) -> [c], higher = better).
    estimator: a name from probes.estimators (default DEFAULT_ESTIMATOR); budget = number of
               coalition evaluations (default 10 per head; ignored by 'exact').
    seed:      the estimator's seed; task_seed: the seed of the task's examples (kept apart, so two
               estimator seeds value the same batch).
    store:     a directory that streams every evaluation; a rerun resumes from it.
    n_examples: examples in the task batch (default: the task's own size).
    metric:    which of the task's metrics (default: its natural one).
    game_builder: builds the game instead of probes.model_game, with its arguments (e.g. a
               probes.distributed.ray_model_game partial that fans evaluations out over Ray).
    settings:  passed to the estimator.
    """
    loaded = load(model) if tokenizer is None else load(model, tokenizer=tokenizer)
    values = component_values(loaded, task, "heads", estimator or DEFAULT_ESTIMATOR, budget, seed, store,
                              n_examples, mode, metric, tokenizer, task_seed, max_rows, progress, game_builder,
                              settings)
    return HeadValues.from_values(values, loaded.components.n_heads)


def component_values(loaded: LoadedModel, task, players: str, estimator: str, budget, seed, store, n_examples,
                     mode, metric, tokenizer, task_seed, max_rows, progress, game_builder, settings) -> Values:
    """The game over `players` on `task`, estimated; shared by head_values and layer_values."""
    batch, bound_metric, task_name = resolve_task(loaded, task, n_examples, metric, task_seed, tokenizer)
    build = game_builder or model_game
    # Estimators ask for their whole design in one call; cutting it into chunks (batch_size) is what
    # lets the store persist evaluations as they are made (a crash loses at most one chunk).
    game = build(loaded, batch, bound_metric, players, mode=mode, store=store, task_name=task_name,
                 max_rows=max_rows, progress=progress, batch_size=max(1, max_rows))
    if budget is None and estimator not in FIXED_DESIGN:
        budget = DEFAULT_BUDGET_PER_PLAYER * game.n_players
    values = estimate(game, budget=budget, seed=seed, estimator=estimator, **settings)
    values.details.setdefault("task_seed", task_seed)
    values.details["n_examples"] = int(batch.size)
    values.details["wall_evaluations_this_run"] = int(game.n_evaluations)  # the rest came from the store
    return values


def resolve_task(loaded: LoadedModel, task, n_examples=None, metric=None, task_seed: int = 0, tokenizer=None):
    """(TokenBatch, bound metric, task name) for any form of `task` head_values accepts: a task name,
    a Task (n_examples drawn with task_seed, tokenised with `tokenizer` or the model's), a TaskBatch,
    or (TokenBatch, metric). metric: the task's metric to use (default its natural one), 'kl', or a
    callable."""
    from probes.tasks import Task, TaskBatch, get_task
    from probes.model_game import metric_name

    if isinstance(task, tuple) and len(task) == 2 and isinstance(task[0], TokenBatch):
        batch, fn = task
        if not callable(fn):
            raise ProbeError("task=(TokenBatch, metric) needs a callable metric(logits, batch) -> [c]")
        return batch, fn, f"custom:{metric_name(fn)}"
    if isinstance(task, TokenBatch):
        raise ProbeError("a bare TokenBatch has no metric; pass task=(batch, metric) or a task name / Task")
    if isinstance(task, TaskBatch):
        tb = task
    elif isinstance(task, (str, Task)):
        source = tokenizer if tokenizer is not None else loaded.tokenizer
        if source is None:
            raise ProbeError(f"model {loaded.source!r} has no tokenizer, so task {getattr(task, 'name', task)!r} "
                             "cannot be tokenised; pass tokenizer=..., a ready TaskBatch, or (TokenBatch, metric)")
        tb = get_task(task).batch(source, n=n_examples, seed=task_seed)
    else:
        raise ProbeError(f"task must be a task name, Task, TaskBatch or (TokenBatch, metric); got {type(task).__name__}")
    if metric == "kl":
        # KL needs the unablated model's next-token distributions at the scored positions: one clean
        # forward now, held as a tensor (so a Ray game can ship it to its workers too).
        bound = tb.metric("kl", clean=unablated_logits(loaded, tb.tokens))
    else:
        bound = metric if callable(metric) and not isinstance(metric, str) else tb.metric(metric)
    name = metric if isinstance(metric, str) else tb.default_metric if metric is None else metric_name(metric)
    return tb.tokens, bound, f"{tb.task}:{name}"


def unablated_logits(loaded: LoadedModel, batch: TokenBatch):
    """Logits of the whole model at the batch's scored positions, [B, P, vocab]."""
    import torch

    from surgery.engine import AblationEngine

    engine = AblationEngine(loaded, "layers")
    logits = engine.logits(torch.ones(1, engine.n_players, dtype=torch.bool), batch)[0]
    with torch.no_grad():
        return logits.clone()  # a normal tensor (the engine runs in inference mode)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ProbeError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def _with_means(values: Values, means: np.ndarray) -> Values:
    return Values(names=list(values.names), means=np.asarray(means, dtype=float), stderrs=np.zeros(len(values.names)),
                  n_evaluations=0, estimator=values.estimator)


__all__ = ["HeadValues", "HarmfulHead", "head_values", "resolve_task", "DEFAULT_BUDGET_PER_PLAYER"]

