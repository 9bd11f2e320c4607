"""MLP channels removed with a least-squares refit of the down-projection (surgery/linear_refit.py).

The channels are first masked with mean compensation (their down-projection columns zeroed, their
calibration mean in the down-projection bias: surgery/mlp_width.py), then the kept channels' columns
and the bias are refitted in flight so each pruned layer's MLP output matches the unpruned one's on
the calibration tokens, then, for a physical cut, the zeroed channels go (masked == cut, so the refit
carries over exactly). Only weights and the bias change: the export is the compensated one's (stock
config when every layer keeps the same width, else per-layer sizes), with the same calibration needs
(at least 1 + kept channels tokens per pruned layer).
"""

from __future__ import annotations

import torch

from surgery.batch import TokenBatch, concat_batches
from surgery.errors import SurgeryError
from surgery.linear_refit import Sites, append_config_record, check_refit, refit_kept_inputs, restore_config_entry
from surgery.loading import LoadedModel, load
from surgery.mlp_width import check_channels, mask_mlp_channels, mlp_widths, remove_mlp_channels

METHOD = "least_squares_refit"


def mlp_sites(loaded: LoadedModel, channels: dict[int, list[int]]) -> Sites:
    """Sites for the down-projections of layers that lose channels: the kept channels (original numbering)."""
    if not loaded.adapter.mlp_down:
        raise SurgeryError(f"the {loaded.adapter.family} adapter does not say where its MLP projections are (mlp_down)")
    widths = mlp_widths(loaded)
    sites: Sites = {}
    for layer, removed in sorted(channels.items()):
        kept = torch.ones(widths[layer], dtype=torch.bool)
        kept[list(removed)] = False
        sites[(layer, loaded.adapter.mlp_down)] = kept.nonzero().flatten()
    return sites


def repair_mlp_channels(loaded_or_model, channels: dict[int, list[int]], calibration: TokenBatch | list[TokenBatch],
                        *, ridge: float = 0.1, physical: bool = True) -> LoadedModel:
    """A copy of the model without the MLP `channels` {layer: [channel, ...]}, mean-compensated and
    refitted on `calibration` (one forward of this model and one of the pruned one over all of it) so
    each pruned layer's MLP output matches this model's.

    The record of the fit (calibration tokens, ridge, per layer the relative error of the MLP output
    before and after the refit) is appended to `config.surgery_mlp_repair`.
    """
    loaded = load(loaded_or_model)
    batch = concat_batches(calibration)
    drop = check_channels(loaded, channels)
    sites = mlp_sites(loaded, drop)
    check_refit(sites, batch, ridge)  # before any work
    masked = mask_mlp_channels(loaded, drop, compensate_with=batch)
    fit = refit_kept_inputs(loaded, masked, sites, batch, ridge=ridge)
    record = {"method": METHOD, "ridge": float(ridge), "calibration_tokens": int(batch.attention_mask.sum()),
              "layers": {str(layer): dict(entry) for (layer, _), entry in sorted(fit.items())}}
    if physical:
        restore_config_entry(masked.model.config, "surgery_masked_mlp_channels", loaded.model.config)
        # The removed columns are zero and their means already in the bias: cut without compensating again.
        result = remove_mlp_channels(masked, drop, copy=False)
    else:
        result = masked
    append_config_record(result.model.config, "surgery_mlp_repair", record)
    count = sum(map(len, drop.values()))
    return LoadedModel(result.model, result.tokenizer, result.adapter, result.components,
                       f"{loaded.source} [{count} MLP channels {'removed' if physical else 'masked'}, refitted ({METHOD})]")


__all__ = ["repair_mlp_channels", "mlp_sites", "METHOD"]
