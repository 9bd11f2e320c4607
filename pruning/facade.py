"""The short public surface of `pruning`: plan, apply, export, evaluate, with one argument order.

Every function takes the model first (anything `surgery.load` takes: a name, a path, a
transformers model or a LoadedModel), then the values when it uses them, then keyword settings:

    import pruning
    plan = pruning.plan_heads(model, values, fraction=0.2)
    applied = pruning.apply_plan(model, plan)              # AppliedPlan(model=..., report=...)
    pruning.export_pruned(model, plan, "smollm2-pruned")   # checkpoint + manifest.json
    pruning.evaluate_model(applied.model, ["induction"])

The functions behind them (pruning.policies.head_plan(values, loaded, ...) and friends) keep their
names and argument order for existing callers; these wrappers only load the model and reorder.
"""

from __future__ import annotations

from typing import Iterable

from probes.values import Values
from pruning.apply import AppliedPlan, apply_plan as _apply_loaded
from pruning.errors import PruningError
from pruning.evaluate import next_token_loss  # perplexity of a model on token batches, re-exported
from pruning.plan import PruningPlan
from surgery.batch import TokenBatch
from surgery.loading import load


def plan_heads(model, values: Values, *, k: int | None = None, fraction: float | None = None,
               harmful_confidence: float | None = None, **settings) -> PruningPlan:
    """Remove the k (or fraction) lowest-valued heads, or every confidently harmful head.

    settings: min_per_layer, removal ('physical' or 'masked'), removal_mode, values_file, ...
    (pruning.policies.head_plan)."""
    from pruning.policies import head_plan

    return head_plan(values, load(model), k=k, fraction=fraction, harmful_confidence=harmful_confidence, **settings)


def plan_layers(model, values: Values | None = None, *, k: int | None = None, fraction: float | None = None,
                criterion: str | None = None, calibration: TokenBatch | None = None, **settings) -> PruningPlan:
    """Drop the k (or fraction) lowest-valued layers (values over the layers, or scores={layer: score}).

    settings: cornerstones, scores, values_file, ... (pruning.policies.layer_plan).
    criterion: choose the layers on `calibration` instead: 'banzhaf' / 'banzhaf_iterative' (weighted
    Banzhaf values at the operating point; budget=, seed=), 'sleb' (greedy, evaluated) or 'block_influence';
    settings then: repair, ridge, measure, cornerstones, ... (pruning.layer_selection.criterion_layer_plan)."""
    if criterion is not None:
        from pruning.layer_selection import criterion_layer_plan

        if values is not None:
            raise PruningError(f"give layer values or criterion={criterion!r}, not both")
        if calibration is None:
            raise PruningError(f"criterion {criterion!r} chooses layers on calibration text: pass calibration=")
        return criterion_layer_plan(load(model), criterion, calibration, k=k, fraction=fraction, **settings)
    from pruning.policies import layer_plan

    return layer_plan(values, load(model), k=k, fraction=fraction, **settings)


def plan_sparsity(model, values: Values | None = None, *, target: float, allocation: str | None = None,
                  calibration: TokenBatch | Iterable[TokenBatch] | None = None, **settings) -> PruningPlan:
    """Per-layer unstructured sparsity with mean `target`.

    allocation: 'shapley' (from layer `values`; the default when values are given), 'uniform'
    (the default without values) or 'owl' (outlier ratios: pass outliers=, or calibration= and they
    are measured on it). settings: method ('wanda' or 'magnitude'), lam, n_m, ... (pruning.policies.sparsity_plan).
    """
    from pruning.policies import sparsity_plan
    from pruning.sparsity import input_norms, outlier_ratios

    loaded = load(model)
    allocation = allocation or ("shapley" if values is not None else "uniform")
    if allocation == "owl" and settings.get("outliers") is None:
        if calibration is None:
            raise PruningError("allocation='owl' needs outlier ratios: pass calibration= (tokens) or outliers=")
        batches = [calibration] if isinstance(calibration, TokenBatch) else list(calibration)
        settings["outliers"] = outlier_ratios(loaded, input_norms(loaded, batches))
    return sparsity_plan(loaded, target, allocation=allocation, values=values, **settings)


def plan_width(model, *, ratio: float, calibration: TokenBatch | None = None, **settings) -> PruningPlan:
    """Remove the lowest-scored `ratio` of every MLP's channels (pruning.width.width_plan)."""
    from pruning.width import width_plan

    return width_plan(load(model), ratio, calibration=calibration, **settings)


def plan_target(model, calibration: TokenBatch, *, target_speedup: float | None = None, target_params=None,
                timing: dict | None = None, **settings) -> PruningPlan:
    """Layers dropped (+ repair), MLP width and heads that reach a speed-up (by a timing table) or a
    parameter count ('100M') at the least loss on `calibration` (pruning.target_plan.target_plan:
    criterion, width_ratios, head_values, head_fractions, repair, seed, budget, ...)."""
    from pruning.target_plan import target_plan

    return target_plan(load(model), calibration, target_speedup=target_speedup, target_params=target_params,
                       timing=timing, **settings)


def apply_plan(model, plan: PruningPlan, *, calibration: TokenBatch | Iterable[TokenBatch] | None = None,
               check_model: bool = True) -> AppliedPlan:
    """A pruned copy of `model` (the original is untouched): AppliedPlan(model, report)."""
    return _apply_loaded(load(model), plan, calibration=calibration, check_model=check_model)


def export_pruned(model, plan: PruningPlan, out_dir, **settings) -> dict:
    """Apply `plan` to a copy of `model`, write a checkpoint transformers loads; returns the manifest.

    settings: force, calibration, removal, dtype, ... (pruning.export.export_pruned)."""
    from pruning.export import export_pruned as export_loaded

    return export_loaded(load(model), plan, out_dir, **settings)


def evaluate_model(model, tasks: Iterable[str] | None = None, **settings) -> dict:
    """Perplexity on text, each task's accuracy-like score, size, forward time and latency
    (pruning.evaluate.evaluate_model: text, n, seq_len, seed, ...)."""
    from pruning.evaluate import evaluate_model as evaluate_loaded

    return evaluate_loaded(load(model), tasks, **settings)


__all__ = ["plan_heads", "plan_layers", "plan_sparsity", "plan_width", "plan_target", "apply_plan", "export_pruned",
           "evaluate_model", "next_token_loss", "AppliedPlan", "PruningPlan", "PruningError"]
