"""Policies: Values in, PruningPlan out. Each records itself in the plan's provenance."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from probes.values import Values
from pruning.errors import PruningError
from probes.metrics import metric_sign
from pruning.plan import REMOVAL_MODES, PruningPlan, check_removal_matches, model_identity, values_ablation
from pruning.sparsity import allocate_ratios, check_n_m, check_n_m_fits, n_m_sparsity
from surgery.batch import TokenBatch
from surgery.engine import AblationEngine, leave_one_out_masks
from surgery.loading import LoadedModel


def _check_values_for(values: Values, loaded: LoadedModel, kind: str, allow_unverified: bool) -> dict:
    """Refuse values that are not `kind` values of this model; returns how they were verified (for the plan).

    The player names must be this model's grid, always. The weights must be verified too: values
    carry the digest of the model they were computed on. Values without one (hand-made, stripped, or
    from an older digest scheme that cannot see head order) could belong to any model of the same
    shape, so they give no plan unless the caller says allow_unverified=True, which the plan records.
    """
    from probes.model_game import is_legacy_digest

    expected = loaded.components.heads if kind == "heads" else loaded.components.layers
    if list(values.names) != expected:
        sample = ", ".join(list(values.names)[:3])
        raise PruningError(f"these values ({len(values.names)} players: {sample}, ...) are not {kind} values of "
                           f"this model ({len(expected)} {kind}); compute them with `surgery values {kind}` on it")
    grid = (values.details or {}).get("grid")
    if kind == "heads" and grid and [int(h) for h in grid] != list(loaded.components.n_heads):
        raise PruningError(f"these head values have heads per layer {list(grid)}, this model has "
                           f"{list(loaded.components.n_heads)}; compute values on this model")
    digest = (values.fingerprint or {}).get("model_digest")
    if digest and not is_legacy_digest(digest):
        if digest != model_identity(loaded)["digest"]:
            raise PruningError(f"these values were computed on another model ({values.fingerprint.get('model')!r}, "
                               f"digest {digest}); compute values on this model first")
        return {"verified": True, "model_digest": digest}
    why = ("carry a model digest of an older scheme that cannot tell heads apart" if digest else
           "carry no model digest (no fingerprint)")
    if not allow_unverified:
        raise PruningError(f"these values {why}, so nothing shows they were computed on this model's weights; "
                           f"recompute them with `surgery values {kind}` on this model, or, if you know they "
                           "belong to it, pass --allow-unverified-values (allow_unverified=True); the plan records it")
    return {"verified": False, "reason": why, "model_digest": digest}


def _provenance(policy: str, values: Values | None, values_file: str | None, verification: dict | None = None,
                **settings) -> dict:
    record = {"policy": policy, "settings": settings}
    if values is not None:
        record["values"] = {"file": values_file, "estimator": values.estimator, "seed": values.seed,
                            "fingerprint_id": values.fingerprint_id, "ablation": values_ablation(values),
                            "model_check": verification}
        objective = (values.fingerprint or {}).get("objective")
        if objective is not None:  # what the values optimised (keep-the-model KL, task mix), shown by plans
            record["values"]["objective"] = objective
        if "p" in (values.settings or {}) and values.estimator == "weighted_banzhaf":
            record["values"]["p"] = values.settings["p"]
    if verification is not None and not verification["verified"]:
        record["allow_unverified_values"] = True  # the user's override, visible at the top of the record
    return record


def _removal_for(values: Values, removal_mode: str | None, allow_mismatch: bool) -> tuple[str, dict | None]:
    """The plan's removal mode (by default the one the values' game assumed) and, for compensated
    removal, the calibration the values' mean ablation used (its batch digest)."""
    ablation = values_ablation(values)
    if removal_mode is None:
        removal_mode = "mean_compensated" if ablation == "mean" else "zero"
    if removal_mode not in REMOVAL_MODES:
        raise PruningError(f"removal_mode must be one of {REMOVAL_MODES}, got {removal_mode!r}")
    check_removal_matches(removal_mode, ablation, "these values were", allow_mismatch=allow_mismatch)
    calibration = None
    if removal_mode == "mean_compensated" and ablation == "mean":
        fp = values.fingerprint
        calibration = {"source": "the values' mean-ablation reference batch",
                       "digest": fp.get("reference_digest") or fp.get("batch_digest")}
    return removal_mode, calibration


def _count(n_total: int, k: int | None, fraction: float | None, what: str) -> int | None:
    if k is not None and fraction is not None:
        raise PruningError(f"give k or fraction of {what}, not both")
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise PruningError(f"fraction of {what} {fraction} is outside [0, 1]")
        return int(round(fraction * n_total))
    if k is not None and not 0 <= k <= n_total:
        raise PruningError(f"k={k} {what} is outside 0..{n_total}")
    return k


def head_plan(values: Values, loaded: LoadedModel, *, k: int | None = None, fraction: float | None = None,
              harmful_confidence: float | None = None, min_per_layer: int = 1, removal: str = "physical",
              values_file: str | None = None, scores_are: str = "values", removal_mode: str | None = None,
              allow_ablation_mismatch: bool = False, allow_unverified: bool = False) -> PruningPlan:
    """Remove the k (or fraction) lowest-valued heads, or every confidently harmful head.

    harmful_confidence=0.95: remove heads whose two-sided 95% interval lies below 0, i.e.
    mean + z * stderr < 0 with z = 1.96 (the interference heads of Shapley head pruning; the same
    rule as HeadValues.harmful, so a plan removes exactly the heads reported as harmful). min_per_layer heads stay in every layer.
    GQA is handled when the plan is applied: a key/value head goes only with all its query heads.
    removal_mode: "zero" or "mean_compensated" (default: what the values' game ablated: mean ->
    compensated). Values computed under the other ablation are refused (warned with
    allow_ablation_mismatch=True).
    allow_unverified: accept values without a (current) model digest; recorded in the plan.
    """
    verification = _check_values_for(values, loaded, "heads", allow_unverified)
    removal_mode, calibration = _removal_for(values, removal_mode, allow_ablation_mismatch)
    means, errs = np.asarray(values.means, float), np.asarray(values.stderrs, float)
    names = list(values.names)
    if harmful_confidence is not None:
        if not 0.5 <= harmful_confidence < 1:
            raise PruningError(f"harmful_confidence {harmful_confidence} must lie in [0.5, 1)")
        z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.5 + harmful_confidence / 2)))
        known = values.has_interval()
        if not known.any():
            raise PruningError(f"these {values.estimator} values have no confidence intervals (standard error "
                               "unknown or 0 from an approximation), so no head is confidently harmful; remove "
                               "a number of heads instead (k= / fraction=, --k / --fraction)")
        candidates = [i for i in np.argsort(means) if known[i] and means[i] + z * errs[i] < 0]
        limit = len(candidates)
    else:
        limit = _count(len(names), k, fraction, "heads")
        if limit is None:
            raise PruningError("say how many heads to remove: k=, fraction= or harmful_confidence=")
        candidates = list(np.argsort(means, kind="stable"))
    comps = loaded.components
    left = {l: comps.n_heads[l] for l in range(comps.n_layers)}
    chosen = []
    for i in candidates:
        if len(chosen) >= limit:
            break
        layer = comps.parse(names[i]).layer
        if left[layer] - 1 < min_per_layer:
            continue
        left[layer] -= 1
        chosen.append(names[i])
    if len(chosen) < limit and harmful_confidence is None:
        raise PruningError(f"only {len(chosen)} of {limit} heads can go with min_per_layer={min_per_layer}")
    return PruningPlan(model_identity(loaded), heads=chosen, head_removal=removal, provenance=[_provenance(
        "head_plan", values, values_file, verification, k=k, fraction=fraction, harmful_confidence=harmful_confidence,
        min_per_layer=min_per_layer, scores_are=scores_are)], removal_mode=removal_mode, calibration=calibration)


def find_cornerstones(loaded: LoadedModel, batch: TokenBatch, metric: Callable, collapse: float = 0.5) -> dict:
    """Layers whose removal alone collapses the task: v(N) - v(N \\ l) > collapse * (v(N) - v(empty))."""
    engine = AblationEngine(loaded, "layers")
    v = metric_sign(metric) * engine.evaluate(leave_one_out_masks(engine.n_players, with_empty=True), batch, metric)
    full, empty, drop = float(v[0]), float(v[1]), (v[0] - v[2:]).tolist()
    gap = full - empty
    corner = [l for l, d in enumerate(drop) if gap > 0 and d > collapse * gap]
    return {"cornerstones": corner, "full": full, "empty": empty, "single_removal_drop": drop, "collapse": collapse}


def layer_plan(values: Values | None, loaded: LoadedModel, *, k: int | None = None, fraction: float | None = None,
               cornerstones: list[int] | None = None, scores: dict[int, float] | None = None,
               values_file: str | None = None, scores_are: str = "values",
               allow_unverified: bool = False) -> PruningPlan:
    """Drop the k (or fraction) lowest-scored layers, never a cornerstone layer.

    scores: {layer: importance} instead of Values (baselines: Block Influence, position).
    """
    n = loaded.components.n_layers
    verification = None
    if values is not None:
        verification = _check_values_for(values, loaded, "layers", allow_unverified)
        scores = {i: float(m) for i, m in enumerate(values.means)}
    if scores is None:
        raise PruningError("layer_plan needs values or scores")
    limit = _count(n, k, fraction, "layers")
    if limit is None:
        raise PruningError("say how many layers to drop: k= or fraction=")
    if limit >= n:
        raise PruningError(f"dropping {limit} of {n} layers leaves none; keep at least one")
    protected = set(cornerstones or [])
    order = [l for l in sorted(scores, key=lambda l: (scores[l], l)) if l not in protected]
    if len(order) < limit:
        raise PruningError(f"only {len(order)} layers are not cornerstones; cannot drop {limit}")
    return PruningPlan(model_identity(loaded), layers=order[:limit], cornerstones=sorted(protected),
                       provenance=[_provenance("layer_plan", values, values_file, verification, k=k, fraction=fraction,
                                               scores_are=scores_are)])


def check_n_m_settings(n_m, target: float, allocation: str) -> tuple[int, int] | None:
    """Validate an N:M pattern against the other sparsity settings (no model needed, so a CLI can call it
    before any work). N:M fixes every layer's sparsity at (M - N) / M."""
    n_m = check_n_m(n_m)
    if n_m is None:
        return None
    fixed = n_m_sparsity(*n_m)
    if allocation != "uniform":
        raise PruningError(f"{n_m[0]}:{n_m[1]} sparsity zeroes the same fraction ({fixed:g}) of every layer, so "
                           f"a per-layer allocation ({allocation!r}) cannot apply; use allocation 'uniform' "
                           "(--allocation uniform)")
    if abs(target - fixed) > 1e-9:
        raise PruningError(f"target sparsity {target:g} conflicts with {n_m[0]}:{n_m[1]}, which zeroes exactly "
                           f"{fixed:g} of the weights; set the target to {fixed:g} (--target {fixed:g}) or drop "
                           "the N:M pattern")
    return n_m


def sparsity_plan(loaded: LoadedModel, target: float, *, allocation: str = "shapley", values: Values | None = None,
                  outliers: dict[int, float] | None = None, lam: float = 0.08, method: str = "wanda",
                  n_m: tuple[int, int] | None = None, values_file: str | None = None,
                  allow_unverified: bool = False) -> PruningPlan:
    """Per-layer sparsity with mean `target`: uniform, from Shapley layer values (SV-NUP) or OWL outliers.

    n_m=(N, M) zeroes M - N of every M weights in every layer, so it fixes the sparsity of each layer
    at (M - N) / M: it needs allocation='uniform' and a target equal to that (anything else would
    write a plan and manifest that promise a sparsity the export does not have).
    """
    if not 0.0 <= target <= 1.0:
        raise PruningError(f"target sparsity {target} is outside [0, 1]")
    n = loaded.components.n_layers
    n_m = check_n_m_settings(n_m, target, allocation)
    if n_m is not None:
        check_n_m_fits(loaded, n_m)
    verification = None
    if allocation == "uniform":
        ratios = {l: float(target) for l in range(n)}
    elif allocation == "shapley":
        if values is None:
            raise PruningError("allocation='shapley' needs layer values (e.g. sliding-window values)")
        verification = _check_values_for(values, loaded, "layers", allow_unverified)
        ratios = allocate_ratios(target, {i: float(m) for i, m in enumerate(values.means)}, lam)
    elif allocation == "owl":
        if outliers is None:
            raise PruningError("allocation='owl' needs per-layer outlier ratios (pruning.sparsity.outlier_ratios)")
        ratios = allocate_ratios(target, outliers, lam)
    else:
        raise PruningError(f"unknown allocation {allocation!r}: use 'uniform', 'shapley' or 'owl'")
    return PruningPlan(model_identity(loaded), sparsity=ratios, sparsity_method=method,
                       n_m=list(n_m) if n_m else None,
                       provenance=[_provenance("sparsity_plan", values, values_file, verification, target=target,
                                               allocation=allocation, lam=lam, method=method,
                                               n_m=list(n_m) if n_m else None)])
