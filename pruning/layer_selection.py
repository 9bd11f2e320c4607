"""Which layers to drop, chosen for the operating point the pruned model will actually run at.

Criteria (`LAYER_CRITERIA`), all on a game over the layers whose value is the keep-the-model objective
(probes.objective: minus the KL of the pruned model's next-token distributions to the dense model's on
calibration text, or minus the LM loss); a zero-ablated layer passes its input through unchanged, which
is exactly a dropped layer, so v(S) is the quality of the model that keeps the layers S:

- "banzhaf": weighted Banzhaf values with layers as players at p = keep fraction (1 - k / candidates):
  each layer's marginal contribution averaged over the coalitions the pruned model lives near.
- "banzhaf_iterative": remove one layer at a time; before each removal the survivors are re-valued on
  the model without the layers already removed, at p = the keep fraction of the removals still to make.
- "sleb" (SLEB, Song et al. 2024): at each step evaluate, for every surviving layer, the model without
  it (and without the layers already removed) and drop the one whose removal hurts the objective least.
  Costs (n + n-1 + ... + n-k+1) evaluations, no sampling error.
- "block_influence" (ShortGPT): 1 - cos(input, output) of each block, one dense pass.

Cornerstone layers are never players to remove (they stay present in every coalition).
Every order is deterministic given the seed (banzhaf) or outright (sleb, block_influence); ties go to
the lower layer number.
"""

from __future__ import annotations

import numpy as np

from probes.estimators.weighted_banzhaf import weighted_banzhaf
from probes.game import Game
from pruning.errors import PruningError
from pruning.iterative import survivor_game
from pruning.plan import PruningPlan, model_identity
from surgery.batch import TokenBatch
from surgery.components import parse_component

LAYER_CRITERIA = ("banzhaf", "banzhaf_iterative", "sleb", "block_influence")
GAME_CRITERIA = ("banzhaf", "banzhaf_iterative", "sleb")


def layer_objective_game(loaded, calibration: TokenBatch, measure: str = "kl", store=None) -> Game:
    """The keep-the-model game over every layer of `loaded` (v = -KL to the dense model, or -loss)."""
    from probes.objective import keep_model_objective, objective_game

    objective = keep_model_objective(loaded, calibration, measure=measure)
    return objective_game(loaded, objective, "layers", mode="zero", store=store)


def _candidates(game: Game, cornerstones, k: int) -> list[str]:
    protected = {f"L{int(c)}" for c in cornerstones or ()}
    unknown = protected - set(game.players)
    if unknown:
        raise PruningError(f"cornerstone layers {sorted(unknown)} are not players of this layer game "
                           f"(players {game.players[0]}..{game.players[-1]})")
    candidates = [name for name in game.players if name not in protected]
    if not 0 < k < game.n_players:
        raise PruningError(f"k={k} layers to drop must lie in 1..{game.n_players - 1}")
    if k > len(candidates):
        raise PruningError(f"only {len(candidates)} layers are not cornerstones; cannot drop {k}")
    return candidates


def sleb_layer_order(game: Game, k: int, *, cornerstones=(), progress=None) -> tuple[list[int], list[dict]]:
    """SLEB's greedy choice: k times, drop the surviving layer whose removal leaves the highest value.

    Returns (layers in the order removed, per-step records with every candidate's value)."""
    candidates = _candidates(game, cornerstones, k)
    index = {name: i for i, name in enumerate(game.players)}
    present = np.ones(game.n_players, dtype=bool)
    removed, steps = [], []
    for step in range(k):
        left = [name for name in candidates if present[index[name]]]
        rows = np.repeat(present[None, :], len(left), axis=0)
        for r, name in enumerate(left):
            rows[r, index[name]] = False
        values = game(rows)
        best = int(np.argmax(values))  # argmax returns the first maximum: ties go to the lower layer
        present[index[left[best]]] = False
        removed.append(parse_component(left[best]).layer)
        steps.append({"step": step, "removed": left[best], "value": float(values[best]),
                      "candidate_values": {name: float(v) for name, v in zip(left, values)}})
        if progress:
            progress(steps[-1])
    return removed, steps


def banzhaf_layer_order(game: Game, k: int, *, budget: int, seed: int = 0, iterative: bool = False,
                        cornerstones=(), store_dir=None, progress=None) -> tuple[list[int], list[dict]]:
    """The k layers to drop by weighted Banzhaf values at the operating point.

    One-shot: value the candidate layers once at p = 1 - k / candidates, drop the k lowest.
    iterative: k steps of one layer, each valuing the survivors (removed layers held absent) at
    p = 1 - (layers still to drop) / survivors, with `budget` evaluations per step."""
    candidates = _candidates(game, cornerstones, k)
    sizes = [1] * k if iterative else [k]
    removed_names: list[str] = []
    steps = []
    for number, size in enumerate(sizes):
        playing = [name for name in candidates if name not in removed_names]
        if k - len(removed_names) >= len(playing):  # every candidate left goes: nothing to value
            removed_names.extend(playing)
            steps.append({"step": number, "removed": playing, "p": 0.0, "n_players": len(playing)})
            break
        store = None if store_dir is None else f"{store_dir}/step{number:02d}/store"
        sub = survivor_game(game, removed_names, store=store, players=playing)
        p = 1.0 - (k - len(removed_names)) / len(playing)
        values = weighted_banzhaf(sub, budget, seed=seed * 1000 + number, p=p)
        order = np.argsort(values.means, kind="stable")[:size]
        chosen = [values.names[i] for i in order]
        removed_names.extend(chosen)
        steps.append({"step": number, "removed": chosen, "p": p, "n_players": sub.n_players,
                      "n_evaluations": values.n_evaluations,
                      "values": {name: float(m) for name, m in zip(values.names, values.means)}})
        if progress:
            progress(steps[-1])
    return [parse_component(name).layer for name in removed_names], steps


def layer_order(loaded, criterion: str, k: int, calibration: TokenBatch, *, measure: str = "kl",
                budget: int | None = None, seed: int = 0, cornerstones=(), store_dir=None,
                progress=None) -> tuple[list[int], dict]:
    """(the k layers `criterion` drops, in the order chosen; a record of how they were chosen)."""
    if criterion not in LAYER_CRITERIA:
        raise PruningError(f"unknown layer criterion {criterion!r}; choose one of {LAYER_CRITERIA}")
    n = loaded.components.n_layers
    if not 0 < k < n:
        raise PruningError(f"k={k} layers to drop must lie in 1..{n - 1}")
    record = {"criterion": criterion, "k": k, "measure": measure, "seed": seed, "cornerstones": sorted(cornerstones)}
    if criterion == "block_influence":
        from pruning.importance import block_influence

        scores = {parse_component(name).layer: s for name, s in block_influence(loaded, calibration).items()}
        order = [l for l in sorted(scores, key=lambda l: (scores[l], l)) if l not in set(cornerstones)]
        if len(order) < k:
            raise PruningError(f"only {len(order)} layers are not cornerstones; cannot drop {k}")
        return order[:k], {**record, "scores": {f"L{l}": s for l, s in scores.items()}}
    game = layer_objective_game(loaded, calibration, measure)
    if criterion == "sleb":
        order, steps = sleb_layer_order(game, k, cornerstones=cornerstones, progress=progress)
    else:
        if budget is None:
            raise PruningError(f"criterion {criterion!r} needs budget= (evaluations per valuation), e.g. "
                               f"{2 * n + 8}")
        order, steps = banzhaf_layer_order(game, k, budget=budget, seed=seed, iterative=criterion.endswith("iterative"),
                                           cornerstones=cornerstones, store_dir=store_dir, progress=progress)
    from probes.model_game import batch_digest

    return order, {**record, "budget": budget, "steps": steps, "calibration_digest": batch_digest(calibration),
                   "evaluations": game.n_evaluations}


def check_repair_calibration(loaded, calibration: TokenBatch) -> None:
    """Refuse, before any work, a repair with fewer calibration tokens than the hidden size (each
    span's map has hidden x hidden entries; surgery.layer_repair would refuse it only after the search)."""
    hidden = int(loaded.model.config.hidden_size)
    tokens = int(calibration.attention_mask.sum())
    if tokens < hidden:
        raise PruningError(f"layer repair needs at least {hidden} calibration tokens (the hidden size), got {tokens}; "
                           f"give more calibration text (more or longer sequences) or turn repair off")


def criterion_layer_plan(loaded, criterion: str, calibration: TokenBatch, *, k: int | None = None,
                         fraction: float | None = None, repair: bool = False, ridge: float = 0.1,
                         **settings) -> PruningPlan:
    """A plan dropping k (or fraction) layers chosen by `criterion`, repaired (ReplaceMe) if asked.

    settings: measure ('kl' or 'loss'), budget, seed, cornerstones, store_dir, progress (layer_order)."""
    n = loaded.components.n_layers
    if (k is None) == (fraction is None):
        raise PruningError("say how many layers to drop: give k= or fraction=, one of them")
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise PruningError(f"fraction of layers {fraction} must lie strictly between 0 and 1")
        k = int(round(fraction * n))
    if repair:
        check_repair_calibration(loaded, calibration)
    order, record = layer_order(loaded, criterion, k, calibration, **settings)
    plan = PruningPlan(model_identity(loaded), layers=order, cornerstones=sorted(settings.get("cornerstones") or []),
                       provenance=[{"policy": "criterion_layer_plan", "removal_order": order, **record}])
    if repair:
        from pruning.apply import with_layer_repair

        plan = with_layer_repair(plan, ridge=ridge)
    return plan
