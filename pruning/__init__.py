"""pruning: decide and apply. Plans from values, applied with surgery's cuts, exported, evaluated.

    import pruning
    plan = pruning.plan_heads(model, values, fraction=0.2)   # plan_layers, plan_sparsity, plan_width
    applied = pruning.apply_plan(model, plan)                 # AppliedPlan(model=..., report=...)
    pruning.export_pruned(model, plan, "out-dir")             # checkpoint + manifest.json
    pruning.evaluate_model(applied.model, ["induction"])      # perplexity, task scores, size, latency

Model first, then values, then keyword settings, everywhere (pruning/facade.py).
"""

from pruning.facade import (AppliedPlan, PruningError, PruningPlan, apply_plan, evaluate_model, export_pruned,
                            next_token_loss, plan_heads, plan_layers, plan_sparsity, plan_width)
from pruning.facade import plan_target

__all__ = ["plan_heads", "plan_layers", "plan_sparsity", "plan_width", "apply_plan", "export_pruned",
           "evaluate_model", "next_token_loss", "AppliedPlan", "PruningPlan", "PruningError", "plan_target"]
