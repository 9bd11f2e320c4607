"""Export a pruned model: checkpoint + manifest.json (what was removed, how, plan, source, dtype,
checksums, sizes)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Iterable

from pruning.apply import apply_plan
from pruning.calibration import calibration_batch
from pruning.errors import PruningError
from pruning.evaluate import size_report
from pruning.plan import REMOVAL_MODES, PruningPlan, check_removal_matches
from surgery.batch import TokenBatch
from surgery.loading import LoadedModel
from surgery.save import check_export_target, dtype_name, model_sources, parse_dtype, save_model, verify_export

EXPORT_FORMAT = "model-surgery.export"
# export_pruned(removal=...) also takes the engine's name for the same thing.
_REMOVAL_ALIASES = {"mean": "mean_compensated"}


def export_pruned(loaded: LoadedModel, plan: PruningPlan, out_dir, *, force: bool = False,
                  calibration: TokenBatch | Iterable[TokenBatch] | str | os.PathLike | None = None,
                  removal: str | None = None, dtype=None, allow_ablation_mismatch: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Apply `plan` to a copy of `loaded` and write it to `out_dir` atomically. Returns the manifest.

    removal: "zero" or "mean_compensated" (alias "mean"); default: the plan's removal_mode. With
    compensation the removed heads' mean output over `calibration` (a TokenBatch, a list of them, a
    text file or "builtin") goes into the output bias, so the export equals mean ablation with that
    batch as reference. Values computed under the other ablation are refused (see check_removal_matches).
    dtype: "bf16", "fp16", "fp32" or a torch dtype; default: the model's own dtype.
    progress(stage) is called as each stage starts (applying the plan, then save_model's stages).
    """
    check_export_target(out_dir, force=force, sources=model_sources(loaded))  # before the expensive work
    plan = _with_removal(plan, removal)
    target_dtype = parse_dtype(dtype)
    if plan.heads:
        for record in plan.provenance:
            ablation = (record.get("values") or {}).get("ablation")
            check_removal_matches(plan.removal_mode, ablation, f"the plan's values ({record.get('policy')}) were",
                                  allow_mismatch=allow_ablation_mismatch)
    batches, calibration_record = calibration, None
    compensated = plan.removal_mode == "mean_compensated" and bool(plan.heads)
    width_compensated = plan.mlp_removal == "mean_compensated" and bool(plan.mlp_channels)
    repaired = bool(plan.layers and plan.layer_repair)
    needs_tokens = compensated or width_compensated or repaired or bool(plan.stream_repair)
    if calibration is not None and (needs_tokens or isinstance(calibration, (str, os.PathLike))):
        batch, calibration_record = calibration_batch(loaded, calibration)
        batches = batch
        expected = (plan.calibration or {}).get("digest")
        # A refit (head_repair) fits the bias anew, so only plain compensation must match the game's means.
        if compensated and not plan.head_repair and expected and expected != calibration_record["digest"]:
            warnings.warn(f"the plan's values used calibration batch {expected} for their mean ablation, the export "
                          f"compensates with {calibration_record['digest']}: the biases differ from the game's means",
                          stacklevel=2)
    if progress is not None:
        progress("applying the plan")
    before = size_report(loaded)
    applied = apply_plan(loaded, plan, calibration=batches)
    pruned, report = applied.model, applied.report
    if target_dtype is not None:
        pruned.model.to(target_dtype)  # a private copy: cast in place instead of copying again
    after = size_report(pruned)
    shrinks = plan.head_removal == "physical" and bool(plan.heads) or bool(plan.layers) or bool(plan.mlp_channels)
    notes = _export_notes(plan, compensated, width_compensated, repaired)
    manifest = {
        "format": EXPORT_FORMAT, "version": 1,
        "source_model": plan.model, "plan": plan.to_json_dict(), "applied": report,
        "removal": {"mode": plan.removal_mode, "calibration": calibration_record if compensated else None,
                    **({"head_repair": report["heads"]["repair"]} if "repair" in report.get("heads", {}) else {})},
        "mlp_width": ({"mode": plan.mlp_removal, "calibration": calibration_record if width_compensated else None,
                       **({"repair": report["mlp_channels"]["repair"]} if "repair" in report.get("mlp_channels", {})
                          else {})}
                      if plan.mlp_channels else None),
        "layer_repair": ({**report["layers"]["repair"], "calibration": calibration_record} if repaired else None),
        "stream_repair": ({**report["stream_repair"], "calibration": calibration_record} if plan.stream_repair
                          else None),
        "before": before, "after": after, "file_shrinks": shrinks, "notes": notes,
        "components_after": pruned.components.describe(),
        "dtype": dtype_name(next(pruned.model.parameters()).dtype),
    }
    summary = save_model(pruned, out_dir, force=force, manifest=manifest, progress=progress)
    manifest.update(summary)
    manifest["loads_with"] = ("AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
                              if summary.get("remote_code") else "AutoModelForCausalLM.from_pretrained(dir)")
    return manifest


def _export_notes(plan: PruningPlan, compensated: bool, width_compensated: bool, repaired: bool) -> list[str]:
    """What a reader of manifest.json must know about how the removal was done, one line each."""
    notes = []
    if plan.heads and plan.head_removal == "masked":
        notes.append("heads are MASKED (zeroed output-projection columns): same file size, loads anywhere")
    if compensated and plan.head_repair:
        notes.append("removed heads are MEAN-COMPENSATED and the kept heads REFITTED: the kept heads' output-projection "
                     "columns and the bias are the least-squares fit to the dense model's attention outputs on the "
                     "calibration tokens (plain weights; logits no longer equal mean ablation)")
    elif compensated:
        notes.append("removed heads are MEAN-COMPENSATED: their mean output over the calibration tokens is in the "
                     "attention output bias (logits equal mean ablation of those heads)")
    elif plan.heads:
        notes.append("removed heads are ZERO-removed: nothing replaces their output (logits equal zero ablation)")
    if width_compensated and plan.mlp_repair:
        notes.append("removed MLP channels are MEAN-COMPENSATED and the kept channels REFITTED: their down-projection "
                     "columns and the bias are the least-squares fit to the unpruned layer's MLP outputs on the "
                     "calibration tokens (plain weights)")
    elif width_compensated:
        notes.append("removed MLP channels are MEAN-COMPENSATED: their mean over the calibration tokens times their "
                     "down-projection column is in the down-projection bias")
    elif plan.mlp_channels:
        notes.append("removed MLP channels are ZERO-removed: nothing replaces them")
    if repaired:
        notes.append("dropped layers are REPAIRED: a least-squares map per dropped span, fitted on the calibration "
                     "tokens, is folded into the down-projection of the block before it (plain checkpoint)")
    if plan.stream_repair:
        notes.append("every kept block's MLP down-projection" + (" and attention output projection" if
                     plan.stream_repair.get("attention") else "") + " is REFITTED to the dense model's residual "
                     "stream (least squares on the calibration tokens, after the other repairs; plain weights)")
    if plan.sparsity:
        notes.append("unstructured sparsity zeroes weights inside dense tensors: the file does not shrink; "
                     "nonzero_parameters counts what is left")
    return notes


def _with_removal(plan: PruningPlan, removal: str | None) -> PruningPlan:
    if removal is None:
        return plan
    mode = _REMOVAL_ALIASES.get(removal, removal)
    if mode not in REMOVAL_MODES:
        raise PruningError(f"removal={removal!r}: use 'zero' or 'mean_compensated' ('mean')")
    return plan if mode == plan.removal_mode else dataclasses.replace(plan, removal_mode=mode)


__all__ = ["export_pruned", "verify_export", "EXPORT_FORMAT"]
