"""Export a pruned model: checkpoint + manifest.json (what was removed, plan, source, checksums, sizes)."""

from __future__ import annotations

from typing import Callable, Iterable

from pruning.apply import apply_plan
from pruning.evaluate import parameter_count
from pruning.plan import PruningPlan
from surgery.batch import TokenBatch
from surgery.loading import LoadedModel
from surgery.save import check_export_target, model_sources, save_model, verify_export

EXPORT_FORMAT = "model-surgery.export"


def export_pruned(loaded: LoadedModel, plan: PruningPlan, out_dir, *, force: bool = False,
                  calibration: Iterable[TokenBatch] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Apply `plan` to a copy of `loaded` and write it to `out_dir` atomically. Returns the manifest.

    `progress(stage)` is called as each stage starts (applying the plan, then save_model's stages)."""
    check_export_target(out_dir, force=force, sources=model_sources(loaded))  # before the expensive work
    if progress is not None:
        progress("applying the plan")
    before = parameter_count(loaded)
    pruned, report = apply_plan(loaded, plan, calibration=calibration)
    after = parameter_count(pruned)
    shrinks = plan.head_removal == "physical" and bool(plan.heads) or bool(plan.layers)
    notes = []
    if plan.heads and plan.head_removal == "masked":
        notes.append("heads are MASKED (zeroed output-projection columns): same file size, loads anywhere")
    if plan.sparsity:
        notes.append("unstructured sparsity zeroes weights inside dense tensors: the file does not shrink; "
                     "nonzero_parameters counts what is left")
    manifest = {
        "format": EXPORT_FORMAT, "version": 1,
        "source_model": plan.model, "plan": plan.to_json_dict(), "applied": report,
        "before": before, "after": after, "file_shrinks": shrinks, "notes": notes,
        "components_after": pruned.components.describe(),
    }
    summary = save_model(pruned, out_dir, force=force, manifest=manifest, progress=progress)
    manifest.update(summary)
    manifest["loads_with"] = ("AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
                              if summary.get("remote_code") else "AutoModelForCausalLM.from_pretrained(dir)")
    return manifest


__all__ = ["export_pruned", "verify_export", "EXPORT_FORMAT"]
