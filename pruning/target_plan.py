"""A plan that reaches a target speed-up (or size) at the least measured loss on calibration text.

    plan = target_plan(loaded, calibration, target_speedup=1.25, timing=table)

Search: the layers are put in drop order once by each layer criterion asked for (pruning/layer_selection.py:
SLEB, weighted Banzhaf values, Block Influence; one or several). Candidates then pair a number k of an
order's first layers, dropped (repaired by ReplaceMe when `repair`), with an MLP width ratio (the
lowest-scored channels of every MLP, mean-compensated or refitted) and a head fraction (the
lowest-valued heads, when head values are given), each reaching the target by the timing table's
prediction (pruning/timing.py) or by the parameter count:
- width_ratios="iso" (the default) walks the target's iso-cost line: for each k from 0 to what
  full-width MLPs need (at most ISO_POINTS values of k), the narrowest cut, in steps of ISO_STEP, with
  which those k layers reach the target. A grid of ratios overshoots the target (each ratio paired with
  the fewest whole layers that reach it: 1.28x for a 1.25x target on SmolLM2), and every bit of
  overshoot is quality given away.
- a list of ratios: each with the fewest layers that reach the target, plus the narrowest cut that
  reaches it with no layer dropped (steps of WIDTH_STEP): at small targets width alone often loses
  least, and a coarse grid would skip it.
Each candidate is applied and its next-token loss measured on the calibration text (or on held-out
calibration rows); the candidate with the least loss is the plan, and every candidate is recorded in
its provenance. Given the seed and the timing table the plan is deterministic (no clock is read when
a table is given).

Refused before any work: both or neither target, a speed-up <= 1, a width ratio outside [0, 1), a head
fraction without head values, and a target no combination reaches ("cannot reach 5.0x without removing
every layer; the most is 2.9x").
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from pruning.errors import PruningError
from pruning.plan import PruningPlan, model_identity
from pruning.timing import check_timing_table, dense_ms, predicted_ms, timing_table
from pruning.width import channel_scores, check_width_ratio, width_plan
from surgery.batch import TokenBatch

DEFAULT_WIDTH_RATIOS = "iso"
WIDTH_STEP = 0.05  # resolution of the width-only candidate's ratio (grid mode)
ISO_STEP = 0.01  # resolution of the iso-cost candidates' ratios
ISO_POINTS = 8  # most numbers of dropped layers tried per order on the iso-cost line
ISO_MAX_WIDTH = 0.75  # the widest MLP cut the iso-cost line may ask for
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_param_count(text) -> int:
    """'100M' -> 100_000_000 ('135.5M', '2B', '800K', '12345' too)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBG]?)\s*", str(text), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise PruningError(f"target parameter count {text!r} is not a positive count; write e.g. 100M, 1.5B or "
                           f"90000000")
    return int(float(match.group(1)) * _SUFFIX[match.group(2).upper()])


def check_targets(target_speedup, target_params, width_ratios, head_fractions, head_values) -> tuple:
    """(speed-up or None, parameter count or None, width ratios, head fractions), all checked."""
    if (target_speedup is None) == (target_params is None):
        raise PruningError("give one target: a speed-up (e.g. 1.25) or a parameter count (e.g. 100M), not both "
                           "and not neither")
    if target_speedup is not None:
        try:
            target_speedup = float(target_speedup)
        except (TypeError, ValueError):
            raise PruningError(f"target speed-up {target_speedup!r} is not a number; e.g. 1.25") from None
        if not math.isfinite(target_speedup) or target_speedup <= 1.0:
            raise PruningError(f"target speed-up {target_speedup} must be a number above 1 (1.25 = 25% faster "
                               f"than the dense model)")
    if target_params is not None:
        target_params = parse_param_count(target_params)
    if isinstance(width_ratios, str):
        if width_ratios != "iso":
            raise PruningError(f"width ratios {width_ratios!r}: give a list of fractions in [0, 1) or 'iso' (the "
                               f"narrowest cut for each number of dropped layers)")
        ratios = None
    else:
        ratios = sorted({check_width_ratio(r) for r in width_ratios})
    fractions = sorted({check_width_ratio(f, "head fraction") for f in head_fractions})
    if any(fractions) and head_values is None:
        raise PruningError("removing heads needs head values (from `surgery values heads`); give head_values= or "
                           "leave head fractions at 0")
    return target_speedup, target_params, ratios, fractions


def component_params(loaded) -> dict:
    """{"total", "layers": [{"block", "mlp"}]}: parameters of the model, of each block and its MLP."""
    adapter, model = loaded.adapter, loaded.model
    blocks = adapter.blocks(model)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    layers = [{"block": count(b), "mlp": count(adapter.get(b, adapter.mlp_out))} for b in blocks]
    return {"total": count(model), "layers": layers}


def _params_table(params: dict) -> dict:
    """Parameters in the timing table's shape, so one prediction serves both targets."""
    outside = params["total"] - sum(l["block"] for l in params["layers"])
    return {"other_ms": float(outside), "layers": [{"block_ms": float(l["block"]), "mlp_ms": float(l["mlp"])}
                                                    for l in params["layers"]]}


def _reaches(table: dict, goal: float, speed: bool, **settings) -> bool:
    cost = predicted_ms(table, **settings)
    return dense_ms(table) / cost >= goal if speed else cost <= goal


def fewest_layers(order, table, goal, speed, mlp_kept=None, heads_kept=None) -> int | None:
    """The fewest layers of `order` whose removal reaches the goal (speed-up if `speed`, else size) by the
    table's prediction, at the given per-layer shares of MLP channels and heads kept; None if none do."""
    for k in range(len(order) + 1):
        if _reaches(table, goal, speed, dropped=order[:k], mlp_kept=mlp_kept, heads_kept=heads_kept):
            return k
    return None


def width_only_ratio(table, goal, speed, n_layers, step: float = WIDTH_STEP) -> float | None:
    """The smallest MLP width ratio (a multiple of `step` below 1) at which narrower MLPs alone, no layer
    dropped, reach the goal by the table's prediction; None when no ratio does."""
    return narrowest_width(table, goal, speed, n_layers, [], step=step, most=1.0 - step)


def narrowest_width(table, goal, speed, n_layers, dropped, heads_kept=None, step: float = ISO_STEP,
                    most: float = ISO_MAX_WIDTH) -> float | None:
    """The smallest MLP width ratio (a multiple of `step`, at most `most`) with which dropping `dropped`
    reaches the goal by the table's prediction; None when even `most` does not."""
    for k in range(int(round(most / step)) + 1):
        ratio = round(k * step, 6)
        if _reaches(table, goal, speed, dropped=dropped, mlp_kept={l: 1.0 - ratio for l in range(n_layers)},
                    heads_kept=heads_kept):
            return ratio
    return None


def _iso_points(order, table, goal, speed, n_layers, fraction) -> list[tuple[int, float]]:
    """(k, width ratio) along the iso-cost line of `order`: k layers dropped with the narrowest cut that
    then reaches the goal, for up to ISO_POINTS values of k from 0 to the fewest layers needing no cut."""
    heads_kept = {l: 1.0 - fraction for l in range(n_layers)}
    full = fewest_layers(order, table, goal, speed, None, heads_kept)
    last = len(order) if full is None else full
    ks = sorted({int(round(x)) for x in np.linspace(0, last, min(last + 1, ISO_POINTS))})
    points = [(k, narrowest_width(table, goal, speed, n_layers, order[:k], heads_kept)) for k in ks]
    return [(k, r) for k, r in points if r is not None]


def _check_reachable(table, goal, speed, droppable, n, max_w, max_h) -> list[int]:
    """Drop order by cost (dearest first, one layer kept when nothing is protected); refuses a target
    that even dropping all of them at the widest cuts cannot reach."""
    dearest = sorted(droppable, key=lambda l: (-table["layers"][l]["block_ms"], l))
    if len(droppable) == n:
        dearest = dearest[:-1]  # the cheapest layer stays: a model needs one block
    kept = {l: 1.0 - max_w for l in range(n)}, {l: 1.0 - max_h for l in range(n)}
    best = predicted_ms(table, dropped=dearest, mlp_kept=kept[0], heads_kept=kept[1])
    if speed and dense_ms(table) / best < goal:
        raise PruningError(f"cannot reach {goal:.2f}x without removing every layer; the most is "
                           f"{dense_ms(table) / best:.2f}x (timing table, widest cuts allowed)")
    if not speed and best > goal:
        raise PruningError(f"cannot reach {goal / 1e6:.1f}M parameters without removing every layer; the fewest "
                           f"is {best / 1e6:.1f}M")
    return dearest


def target_plan(loaded, calibration: TokenBatch, *, target_speedup=None, target_params=None,
                timing: dict | None = None, criterion="sleb", width_ratios=DEFAULT_WIDTH_RATIOS,
                width_score: str = "fluctuation", head_values=None, head_fractions=(0.0,), repair: bool = True,
                ridge: float = 0.1, cornerstones=(), selection: TokenBatch | None = None, progress=None,
                mlp_repair: bool = False, held_out_rows: int = 0, stream_repair: bool = False,
                **layer_settings) -> PruningPlan:
    """The least-loss combination of dropped layers (+ repair), MLP width and heads reaching the target.

    criterion: a layer criterion or a list of them (each gives a drop order; candidates from every order
    compete on the same loss, and each records the criterion it came from).
    timing: a timing table (pruning.timing.timing_table, or its JSON); measured now when None and a
    speed-up is the target. selection: the text the layer criterion plays its game on (default: the
    calibration text; a shorter batch makes SLEB / Banzhaf cheaper). mlp_repair: refit the kept MLP
    channels of every candidate (surgery/mlp_repair.py). held_out_rows: the last rows of `calibration`
    only score the candidates and the rest fit them (scores, compensation, repairs): a fit scored on its
    own tokens favours the candidate that refits most. stream_repair: the chosen plan also refits every
    block to the dense residual stream when it is applied (surgery/stream_refit.py); the candidates are
    scored without it (it needs far more tokens than a search affords: apply the plan with more calibration
    text than the search had). layer_settings: measure, budget, seed, store_dir
    (pruning.layer_selection)."""
    criteria = [criterion] if isinstance(criterion, str) else list(criterion)
    if not criteria:
        raise PruningError("target_plan needs at least one layer criterion, e.g. criterion='sleb'")
    calibration, scoring = _split_rows(calibration, held_out_rows)
    speed, count, ratios, fractions = check_targets(target_speedup, target_params, width_ratios, head_fractions,
                                                    head_values)
    n = loaded.components.n_layers
    if repair:
        from pruning.layer_selection import check_repair_calibration

        check_repair_calibration(loaded, calibration)
    if speed is not None:
        table = check_timing_table(timing, loaded) if timing is not None else timing_table(loaded)
    else:
        table = _params_table(component_params(loaded))
    goal = speed if speed is not None else float(count)
    protected = set(int(c) for c in cornerstones) | ({0} if repair else set())  # a repair map needs a block before
    droppable = [l for l in range(n) if l not in protected]
    widest = ISO_MAX_WIDTH if ratios is None else ratios[-1]
    cheapest_first = _check_reachable(table, goal, speed is not None, droppable, n, widest, fractions[-1])[::-1]
    # Layers any candidate may need: those that reach the goal at full width by the cheapest-first order
    # (an upper bound for every order), or all droppable ones when only narrower MLPs reach it.
    k_max = fewest_layers(cheapest_first, table, goal, speed is not None, None, None)
    k_max = len(cheapest_first) if k_max is None else k_max
    orders, layer_records = {}, []
    for name in criteria:
        order, record = [], None
        if k_max:
            from pruning.layer_selection import layer_order

            order, record = layer_order(loaded, name, k_max, calibration if selection is None else selection,
                                        cornerstones=sorted(protected), progress=progress, **layer_settings)
        layer_records.append(record)
        if order not in orders.values():  # two criteria agreeing would only repeat the same candidates
            orders[name] = order
    width_only = None
    if ratios is not None:
        width_only = width_only_ratio(table, goal, speed is not None, n)
        if width_only is not None and width_only not in ratios:
            ratios = sorted(ratios + [width_only])
    points = []  # (criterion, order, layers dropped, width ratio, head fraction)
    for name, order in orders.items():
        for fraction in fractions:
            if ratios is None:
                points += [(name, order, k, r, fraction) for k, r in _iso_points(order, table, goal, speed is not None,
                                                                                   n, fraction)]
                continue
            for ratio in ratios:
                k = fewest_layers(order, table, goal, speed is not None, {l: 1.0 - ratio for l in range(n)},
                                  {l: 1.0 - fraction for l in range(n)})
                if k is not None:
                    points.append((name, order, k, ratio, fraction))
    scores = channel_scores(loaded, calibration, width_score) if any(p[3] for p in points) else None
    candidates, tried = [], set()
    for name, order, k, ratio, fraction in points:
        # Orders agree on their first k layers where k is small (always at k = 0): the same plan is
        # applied and measured once.
        key = (tuple(sorted(order[:k])), ratio, fraction)
        if key in tried:
            continue
        tried.add(key)
        candidate = _candidate(loaded, calibration, table, goal, speed is not None, order, k, ratio, fraction,
                               scores, width_score, head_values, repair, ridge, mlp_repair, scoring)
        if candidate is not None:
            candidates.append({**candidate, "criterion": name})
            if progress:
                progress({key: v for key, v in candidates[-1].items() if key != "plan"})
    if not candidates:
        raise PruningError(f"no combination reaches the target with the layers {', '.join(criteria)} order; allow "
                           f"wider MLP cuts (width ratios) or more head removal")
    best = min(candidates, key=lambda c: (c["calibration_loss"], c["layers_dropped"], c["width_ratio"]))
    record = {"policy": "target_plan", "target_speedup": speed, "target_params": count,
              "criterion": criterion if isinstance(criterion, str) else criteria,
              "width_ratios": "iso" if ratios is None else ratios, "width_only_ratio": width_only,
              "repair": repair, "ridge": ridge, "width_score": width_score, "timing_table": table if speed else None,
              "mlp_repair": mlp_repair, "held_out_rows": int(held_out_rows),
              "layer_choice": layer_records[0] if isinstance(criterion, str) else layer_records,
              "candidates": [{k: v for k, v in c.items() if k != "plan"} for c in candidates],
              "chosen": {k: v for k, v in best.items() if k != "plan"}}
    plan = best["plan"]
    if stream_repair:
        from pruning.apply import with_stream_repair

        plan = with_stream_repair(plan, ridge)
    record["stream_repair"] = bool(stream_repair)
    plan.provenance = [record]
    return plan


def _split_rows(calibration: TokenBatch, held_out_rows: int) -> tuple[TokenBatch, TokenBatch | None]:
    """(fitting rows, scoring rows or None): the last `held_out_rows` rows score the candidates."""
    held_out_rows = int(held_out_rows)
    if held_out_rows == 0:
        return calibration, None
    if not 0 < held_out_rows < calibration.size:
        raise PruningError(f"held_out_rows={held_out_rows} must lie in 0..{calibration.size - 1} (the calibration "
                           f"batch has {calibration.size} rows and fitting needs at least one)")

    def rows(a, b):
        return TokenBatch(*(None if t is None else t[a:b] for t in (calibration.input_ids, calibration.attention_mask,
                                                                     calibration.score_positions, calibration.targets)))
    cut = calibration.size - held_out_rows
    return rows(0, cut), rows(cut, calibration.size)


@torch.inference_mode()
def _candidate(loaded, calibration, table, goal, speed, order, k, ratio, fraction, scores, width_score, head_values,
               repair, ridge, mlp_repair=False, scoring=None) -> dict | None:
    """The first k layers of `order` dropped at this width and head fraction, applied and measured on
    `scoring` (default: the calibration text). A size goal the applied model misses (rounded channel
    counts) takes one more layer of the order at a time; None when all of `order` do not reach it."""
    from pruning.apply import apply_plan
    from pruning.evaluate import next_token_loss

    n = loaded.components.n_layers
    mlp_kept = {l: 1.0 - ratio for l in range(n)}
    heads_kept = {l: 1.0 - fraction for l in range(n)}
    channels = width_plan(loaded, ratio, scores=scores, method=width_score).mlp_channels if ratio else {}
    heads = []
    if fraction:
        from pruning.policies import head_plan

        heads = head_plan(head_values, loaded, fraction=fraction).heads
    while True:
        layers = order[:k]
        plan = PruningPlan(model_identity(loaded), heads=heads, layers=layers,
                           mlp_channels={l: c for l, c in channels.items() if l not in set(layers)},
                           layer_repair={"method": "replaceme_linear", "ridge": float(ridge)} if repair and layers
                           else None,
                           mlp_repair={"method": "least_squares_refit", "ridge": float(ridge)} if mlp_repair and channels
                           else None)
        model = apply_plan(loaded, plan, calibration=calibration, check_model=False).model
        params = sum(p.numel() for p in model.model.parameters())
        # A size target is checked on the applied model (rounded channel counts, compensation biases);
        # one more layer of the order when the prediction fell short.
        if speed or params <= goal:
            break
        if k == len(order):
            return None
        k += 1
    loss = next_token_loss(model, [calibration if scoring is None else scoring])["loss"]
    cost = predicted_ms(table, dropped=layers, mlp_kept=mlp_kept, heads_kept=heads_kept)
    return {"plan": plan, "layers_dropped": layers, "width_ratio": ratio, "head_fraction": fraction,
            "heads_removed": len(heads), "calibration_loss": loss, "parameters": params,
            "predicted": dense_ms(table) / cost if speed else cost}
