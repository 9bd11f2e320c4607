"""Heads removed with a least-squares refit of the output projection (surgery/linear_refit.py).

The heads are first masked with mean compensation (their columns zeroed, their calibration mean in the
output bias: the same model as mean ablation), then the kept heads' columns and the bias are refitted
in flight so each layer's attention output matches the dense model's on the calibration tokens, then,
for a physical cut, the zeroed columns go (masked == cut, so the refit carries over exactly). Every
family whose compensated removal exports (surgery/compensation.py) exports this too: only weights and
the bias change, the config is the compensated one.
"""

from __future__ import annotations

from surgery.batch import TokenBatch, concat_batches
from surgery.cut import heads_by_layer, mask_heads, remove_heads
from surgery.linear_refit import (append_config_record, check_refit, head_sites, refit_kept_inputs,
                                  restore_config_entry)
from surgery.loading import LoadedModel, load

METHOD = "least_squares_refit"


def repair_heads(loaded_or_model, heads, calibration: TokenBatch | list[TokenBatch], *, ridge: float = 0.1,
                 physical: bool = True, partial_groups: str = "share", empty_layers: str = "error") -> LoadedModel:
    """A copy of the model without `heads`, mean-compensated and refitted on `calibration` (one forward
    of the dense and one of the pruned model over all of it, joined into one batch).

    The record of the fit (calibration tokens, ridge, per layer the relative error of the attention
    output before and after the refit) is appended to `config.surgery_head_repair`.
    """
    loaded = load(loaded_or_model)
    batch = concat_batches(calibration)
    drop = heads_by_layer(loaded.components, heads)
    sites = head_sites(loaded, drop)
    check_refit(sites, batch, ridge)  # before any work
    masked = mask_heads(loaded, drop, compensate_with=batch)
    config = masked.model.config
    fit = refit_kept_inputs(loaded, masked, sites, batch, ridge=ridge)
    record = {"method": METHOD, "ridge": float(ridge), "calibration_tokens": int(batch.attention_mask.sum()),
              "layers": {str(layer): {k: v for k, v in entry.items()} for (layer, _), entry in sorted(fit.items())}}
    if physical:
        restore_config_entry(config, "surgery_masked_heads", loaded.model.config)
        result = remove_heads(masked, drop, copy=False, partial_groups=partial_groups, empty_layers=empty_layers)
    else:
        result = masked
    append_config_record(result.model.config, "surgery_head_repair", record)
    count = sum(map(len, drop.values()))
    return LoadedModel(result.model, result.tokenizer, result.adapter, result.components,
                       f"{loaded.source} [{count} heads {'removed' if physical else 'masked'}, refitted ({METHOD})]")


__all__ = ["repair_heads", "METHOD"]
