"""Carry out a PruningPlan with surgery's cut functions: sparsify, remove heads, remove MLP channels,
drop layers (repaired when the plan says so), then, when the plan asks, refit every block to the dense
residual stream.

Order matters: sparsity ratios and head names refer to the original layer numbering, so layers are
dropped last (before the stream refit, which fits the final shapes). Heads inside dropped layers are
left to the layer removal.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

from pruning.errors import PruningError
from pruning.plan import PruningPlan
from pruning.sparsity import input_norms, sparsify
from surgery.batch import TokenBatch, concat_batches
from surgery.components import parse_head_name
from surgery.cut import mask_heads, remove_heads, remove_layers
from surgery.head_repair import repair_heads
from surgery.layer_repair import repair_layers
from surgery.mlp_repair import repair_mlp_channels
from surgery.mlp_width import remove_mlp_channels
from surgery.stream_refit import refit_to_dense_stream
from surgery.loading import LoadedModel


@dataclass(frozen=True)
class AppliedPlan:
    """What apply_plan returns: the pruned copy of the model and a report of what was done
    (per part of the plan: the heads removed or masked, layers dropped, channels, sparsity)."""

    model: LoadedModel
    report: dict = field(default_factory=dict)


def apply_plan(loaded: LoadedModel, plan: PruningPlan, *, calibration: Iterable[TokenBatch] | None = None,
               check_model: bool = True) -> AppliedPlan:
    """A pruned copy of `loaded` (the original is untouched) and a report of what was done.

    calibration: TokenBatches for Wanda statistics and, when the plan's removal_mode is
    "mean_compensated", the tokens whose mean head outputs go into the output biases (joined into
    one batch: the pruned model then equals AblationEngine(mode="mean", reference=that batch) with
    the plan's heads ablated). The means are taken on the model the heads are cut from (after any
    sparsity of the same plan).
    """
    if check_model:
        plan.check_model(loaded)
    if calibration is not None and not isinstance(calibration, TokenBatch):
        calibration = list(calibration)  # read twice: Wanda and compensation
    work = LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.adapter, loaded.components,
                       loaded.source)
    report: dict = {}
    if plan.sparsity:
        norms = None
        if plan.sparsity_method == "wanda":
            if calibration is None:
                raise PruningError("Wanda sparsity needs calibration batches (text the model should keep handling)")
            norms = input_norms(work, [calibration] if isinstance(calibration, TokenBatch) else calibration)
        report["sparsity"] = sparsify(work, plan.sparsity, plan.sparsity_method or "magnitude", norms,
                                      tuple(plan.n_m) if plan.n_m else None)
    dropped = set(plan.layers)
    heads = [h for h in plan.heads if parse_head_name(h)[0] not in dropped]
    if heads:
        cut = remove_heads if plan.head_removal == "physical" else mask_heads
        reference = None
        if plan.removal_mode == "mean_compensated":
            reference = _calibration_for(calibration, "removes heads with mean compensation")
        report["heads"] = {"removed" if plan.head_removal == "physical" else "masked": heads,
                           "removal_mode": plan.removal_mode}
        if plan.head_repair:
            work = repair_heads(work, heads, reference, ridge=float(plan.head_repair.get("ridge", 0.1)),
                                physical=plan.head_removal == "physical")
            report["heads"]["repair"] = work.model.config.surgery_head_repair[-1]
        else:
            work = cut(work, heads, copy=False, compensate_with=reference)
    channels = {l: c for l, c in plan.mlp_channels.items() if l not in dropped}
    if channels:
        reference = None
        if plan.mlp_removal == "mean_compensated":
            reference = _calibration_for(calibration, "removes MLP channels with mean compensation")
        report["mlp_channels"] = {"removed": sum(map(len, channels.values())), "layers": len(channels),
                                  "removal_mode": plan.mlp_removal}
        if plan.mlp_repair:
            work = repair_mlp_channels(work, channels, reference, ridge=float(plan.mlp_repair.get("ridge", 0.1)))
            report["mlp_channels"]["repair"] = work.model.config.surgery_mlp_repair[-1]
        else:
            work = remove_mlp_channels(work, channels, copy=False, compensate_with=reference)
    if plan.layers and plan.layer_repair:
        reference = _calibration_for(calibration, "repairs dropped layers (a least-squares map per span)")
        work = repair_layers(work, plan.layers, reference, ridge=float(plan.layer_repair.get("ridge", 0.1)),
                             copy=False)
        report["layers"] = {"removed": list(plan.layers),
                            "repair": work.model.config.surgery_layer_repair[-1]}
    elif plan.layers:
        work = remove_layers(work, plan.layers, copy=False)
        report["layers"] = {"removed": list(plan.layers)}
    if plan.stream_repair:
        reference = _calibration_for(calibration, "refits every block to the dense residual stream")
        kept = [l for l in range(loaded.components.n_layers) if l not in dropped]
        work = refit_to_dense_stream(loaded, work, kept, reference, ridge=float(plan.stream_repair.get("ridge", 0.1)),
                                     attention=bool(plan.stream_repair.get("attention", False)))
        report["stream_repair"] = work.model.config.surgery_stream_refit[-1]
    return AppliedPlan(work, report)


def _calibration_for(calibration, what: str) -> TokenBatch:
    if calibration is None:
        raise PruningError(f"this plan {what}, which needs calibration tokens (calibration=TokenBatch or text; "
                           f"`surgery prune --text FILE` or the built-in text)")
    return concat_batches(calibration)


def with_head_repair(plan: PruningPlan, ridge: float = 0.1) -> PruningPlan:
    """The same plan with its kept heads refitted after the removal (surgery/head_repair.py); needs
    mean-compensated removal and calibration tokens at export (at least 1 + head_dim x kept heads of a layer)."""
    import dataclasses
    if ridge < 0:
        raise PruningError(f"ridge={ridge} must be >= 0")
    return dataclasses.replace(plan, head_repair={"method": "least_squares_refit", "ridge": float(ridge)})


def with_mlp_repair(plan: PruningPlan, ridge: float = 0.1) -> PruningPlan:
    """The same plan with its kept MLP channels refitted after the removal (surgery/mlp_repair.py); needs
    mean-compensated MLP removal and calibration tokens at export (at least 1 + kept channels of a layer)."""
    import dataclasses
    if ridge < 0:
        raise PruningError(f"ridge={ridge} must be >= 0")
    return dataclasses.replace(plan, mlp_repair={"method": "least_squares_refit", "ridge": float(ridge)})


def with_stream_repair(plan: PruningPlan, ridge: float = 0.1, attention: bool = True) -> PruningPlan:
    """The same plan with every kept block's down-projection (and, with attention=True, its attention
    output projection) refitted to the dense residual stream after the rest of the plan
    (surgery/stream_refit.py); needs calibration tokens at export, at least MIN_TOKENS_PER_COEFFICIENT x
    (widest kept MLP + 1). A stored plan without "attention" replays without it, as it was made."""
    import dataclasses
    if ridge < 0:
        raise PruningError(f"ridge={ridge} must be >= 0")
    return dataclasses.replace(plan, stream_repair={"method": "dense_stream_refit", "ridge": float(ridge),
                                                    "attention": bool(attention)})


def with_layer_repair(plan: PruningPlan, ridge: float = 0.1) -> PruningPlan:
    """The same plan with its dropped layers repaired by ReplaceMe least-squares maps (surgery/layer_repair.py)."""
    import dataclasses
    if ridge < 0:
        raise PruningError(f"ridge={ridge} must be >= 0")
    return dataclasses.replace(plan, layer_repair={"method": "replaceme_linear", "ridge": float(ridge)})
