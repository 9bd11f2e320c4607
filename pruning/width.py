"""MLP width plans: score every intermediate channel on calibration tokens, remove the lowest-scored
fraction of each layer, replace them by their mean (FLAP).

Scores (both from one pass over the calibration tokens, `surgery.mlp_width.channel_statistics`):
- "fluctuation" (FLAP): variance of the channel over the tokens x squared norm of its down-projection
  column: what mean compensation cannot give back, so it ranks channels for compensated removal.
- "activation_norm" (Wanda-style, per channel): L2 norm of the channel over the tokens x L2 norm of its
  down-projection column: what zero removal would lose.
- "values": given per-channel scores (e.g. from the engine with channel groups as players).

Ratios: one `ratio` for every layer (same count per layer: a stock config), or per-layer ratios
around that mean from layer values (`layer_values`, more valuable layers lose fewer channels, the
rule of SV-NUP/OWL in `pruning.sparsity.allocate_ratios`): uneven widths, the remote-code export.
"""

from __future__ import annotations

import math

import torch

from pruning.errors import PruningError
from pruning.plan import PruningPlan, model_identity
from pruning.sparsity import allocate_ratios
from surgery.batch import TokenBatch
from surgery.mlp_width import channel_statistics, down_column_norms, mlp_widths

WIDTH_SCORES = ("fluctuation", "activation_norm")


def check_width_ratio(ratio, what: str = "MLP width ratio") -> float:
    """A fraction of channels to remove, in [0, 1) (1 would leave an MLP with no channel)."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise PruningError(f"{what} {ratio!r} is not a number; give the fraction of each MLP's channels to remove, "
                           f"e.g. 0.2") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise PruningError(f"{what} {ratio!r} is outside [0, 1): it is the fraction of each MLP's intermediate "
                           f"channels to remove (0.2 = 20%); to remove whole MLPs, drop their layers instead")
    return value


def channel_scores(loaded, calibration: TokenBatch | None, method: str = "fluctuation", *, stats=None
                   ) -> dict[int, torch.Tensor]:
    """{layer: [width] float64 score} (higher = keep) of every MLP channel on `calibration` (or on
    `stats` already taken with `channel_statistics`, to score several ways from one pass)."""
    if method not in WIDTH_SCORES:
        raise PruningError(f"unknown MLP channel score {method!r}: use one of {WIDTH_SCORES} (or pass scores=)")
    stats = channel_statistics(loaded, calibration) if stats is None else stats
    scores = {}
    for layer, s in stats.items():
        column = down_column_norms(loaded, layer)
        if method == "fluctuation":
            variance = (s["sq_mean"] - s["mean"] ** 2).clamp_min(0)
            scores[layer] = variance * column
        else:
            scores[layer] = (s["sq_mean"] * s["tokens"]).sqrt() * column.sqrt()
    return scores


def width_plan(loaded, ratio: float, *, scores: dict[int, torch.Tensor] | None = None,
               calibration: TokenBatch | None = None, method: str = "fluctuation", layer_values=None,
               lam: float = 0.08, removal: str = "mean_compensated") -> PruningPlan:
    """Remove the lowest-scored `ratio` of every MLP's channels (per-layer ratios around `ratio` from
    `layer_values` when given). Scores: `scores` as given (recorded under the name `method`, e.g.
    "values"), else `method` on `calibration`."""
    ratio = check_width_ratio(ratio)
    widths = mlp_widths(loaded)
    if scores is None:
        if calibration is None:
            raise PruningError(f"MLP channel scores ({method}) need calibration tokens: pass calibration= "
                               f"(or scores=)")
        scores = channel_scores(loaded, calibration, method)
    bad = [l for l in range(len(widths)) if l not in scores or len(scores[l]) != widths[l]]
    if bad:
        raise PruningError(f"channel scores missing or of the wrong length for layers {bad[:5]} "
                           f"(widths {[widths[l] for l in bad[:5]]})")
    if layer_values is not None:
        means = list(getattr(layer_values, "means", layer_values))
        if len(means) != len(widths):
            raise PruningError(f"layer values for {len(means)} layers, the model has {len(widths)}")
        ratios = allocate_ratios(ratio, {l: float(m) for l, m in enumerate(means)}, lam)
    else:
        ratios = {l: ratio for l in range(len(widths))}
    channels = {}
    for layer, width in enumerate(widths):
        count = min(int(round(ratios[layer] * width)), width - 1)  # a layer keeps at least one channel
        if count:
            order = torch.argsort(torch.as_tensor(scores[layer], dtype=torch.float64), stable=True)
            channels[layer] = sorted(order[:count].tolist())
    calibration_record = None
    if calibration is not None:
        from probes.model_game import batch_digest
        calibration_record = {"digest": batch_digest(calibration), "tokens": int(calibration.attention_mask.sum())}
    provenance = {"policy": "width_plan", "settings": {"ratio": ratio, "score": method, "lam": lam,
                                                       "per_layer": layer_values is not None,
                                                       "ratios": {str(l): r for l, r in ratios.items()},
                                                       "calibration": calibration_record}}
    return PruningPlan(model_identity(loaded), mlp_channels=channels, mlp_removal=removal, provenance=[provenance])
