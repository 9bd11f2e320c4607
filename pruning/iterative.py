"""Iterative head pruning: remove a step of heads, re-value the survivors on the pruned model, repeat.

Values computed once on the full model go stale as heads are removed: a head that a removed one
backed up becomes important, a redundant pair looks dispensable twice. Michel et al. prune 10% per
step and re-estimate; Bonsai re-fits its regression every round. Here every step plays the game
restricted to the surviving heads, with the removed heads kept ablated (in the game's own ablation
mode, so zero or mean removal is what the later steps see), values the survivors with weighted
Banzhaf values at that step's operating point (p = 1 - share of survivors this step removes, unless
p is given), and removes the lowest-valued ones.

Resumable: each step streams its evaluations to its own store (store_dir/stepNN/store), and the
whole schedule is deterministic given the seed (sampling seeds are derived per step, values read
back from a store are bit-identical), so a killed run that is started again replays the finished
steps from their stores and evaluates only what was never evaluated. Each step's values are also
written to store_dir/stepNN/values.json for inspection.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from probes.estimators.weighted_banzhaf import weighted_banzhaf
from probes.game import Game
from probes.values import Values
from pruning.errors import PruningError
from pruning.plan import PruningPlan, model_identity
from surgery.loading import LoadedModel


def survivor_game(full: Game, removed: list[str], store=None, players: list[str] | None = None,
                  on_evaluated: Callable[[int], None] | None = None) -> Game:
    """The game over `players` (default: every player of `full` not in `removed`); removed players
    are always absent, players of `full` that are neither removed nor playing are always present.
    on_evaluated(n): after each batch of n coalitions evaluated (not read from the store)."""
    gone = set(removed)
    playing = [name for name in full.players if name not in gone] if players is None else list(players)
    if gone & set(playing):
        raise PruningError(f"players {sorted(gone & set(playing))} are both removed and playing")
    index_of = {name: i for i, name in enumerate(full.players)}
    columns = np.array([index_of[name] for name in playing], dtype=int)
    base = np.array([name not in gone for name in full.players])  # present unless removed

    def expand(coalitions: np.ndarray) -> np.ndarray:
        rows = np.repeat(base[None, :], len(coalitions), axis=0)
        rows[:, columns] = coalitions
        return rows

    fingerprint = {k: v for k, v in full.fingerprint.items() if k != "players"}
    fingerprint["removed"] = sorted(removed)
    fingerprint["all_players"] = list(full.players)
    if players is not None:  # a screened step: who else is held present is part of the game
        fingerprint["present"] = sorted(set(full.players) - gone - set(playing))
    def value(coalitions: np.ndarray) -> np.ndarray:
        values = full.value_function(expand(coalitions))
        if on_evaluated is not None:
            on_evaluated(len(coalitions))
        return values

    return Game(playing, value, fingerprint, store=store,
                gate_value=_survivor_gate_value(full.gate_value, columns, base), objective=full.objective)


def _survivor_gate_value(gate_value, columns: np.ndarray, base: np.ndarray):
    """`gate_value` of the full game seen from the survivors: removed players' gates held at 0,
    the others' at 1, the playing ones' gates passed through (None when the full game has none)."""
    if gate_value is None:
        return None
    import torch

    index = torch.from_numpy(columns)
    wide_base = torch.from_numpy(base.astype(np.float32))

    def sub_gate_value(gates):
        wide = wide_base.to(gates.dtype).expand(gates.shape[0], -1).clone()
        return gate_value(wide.index_copy(1, index, gates))

    return sub_gate_value


def schedule(n_total: int, n_remove: int, step: int) -> list[int]:
    """Heads removed per step: `step` each, the remainder in the last step."""
    sizes = [step] * (n_remove // step)
    if n_remove % step:
        sizes.append(n_remove % step)
    return sizes


def _select(values: Values, n: int, left: dict[int, int], layer_of, min_per_layer: int) -> list[str]:
    chosen = []
    for i in np.argsort(values.means, kind="stable"):
        if len(chosen) == n:
            break
        layer = layer_of(values.names[i])
        if left[layer] - 1 < min_per_layer:
            continue
        left[layer] -= 1
        chosen.append(values.names[i])
    if len(chosen) < n:
        raise PruningError(f"only {len(chosen)} of {n} heads can go this step with min_per_layer={min_per_layer}")
    return chosen


def _schedule_for(n: int, budget: int, fraction, k, step_fraction: float, screen, screen_scores, *, ols: bool):
    """(k, step, step sizes, evaluations per step) for removing fraction (or k) of n heads, each
    setting checked; refuses a budget the first step cannot be valued with."""
    if (k is None) == (fraction is None):
        raise PruningError("say how many heads to remove: give k= or fraction=, one of them")
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise PruningError(f"fraction of heads {fraction} must lie strictly between 0 and 1")
        k = int(round(fraction * n))
    if not 0 < k < n:
        raise PruningError(f"k={k} heads to remove must lie in 1..{n - 1}")
    if not 0.0 < step_fraction < 1.0:
        raise PruningError(f"step_fraction {step_fraction} must lie strictly between 0 and 1")
    if (screen is None) != (screen_scores is None):
        raise PruningError("screening needs both screen= (candidates per removed head, > 1) and screen_scores=")
    if screen is not None and not screen > 1.0:
        raise PruningError(f"screen={screen} must be > 1: it is how many candidates are valued per head removed")
    step = max(1, int(round(step_fraction * n)))
    if step > k:
        raise PruningError(f"the step ({step} heads = {step_fraction:.0%} of {n}) is larger than the target ({k} "
                           f"heads); use a step_fraction of at most {k / n:.3f} or a larger target")
    sizes = schedule(n, k, step)
    per_step = budget // len(sizes)
    if per_step < 1:
        raise PruningError(f"budget {budget} cannot be split over {len(sizes)} steps")
    first_players = n if screen is None else min(n, math.ceil(screen * sizes[0]))
    needed = min(first_players + 4, 2**first_players) if ols else 5  # players of the first step
    if per_step < needed:
        raise PruningError(f"budget {budget} split over {len(sizes)} steps gives {per_step} evaluations per step; "
                           f"the first step values {first_players} heads and needs at least {needed}. Raise the budget to "
                           f"{needed * len(sizes)} or more, take larger steps, or use prior='gradient'")
    return k, step, sizes, per_step


def iterative_head_plan(game: Game, loaded: LoadedModel, *, budget: int, store_dir, fraction: float | None = None,
                        k: int | None = None, step_fraction: float = 0.05, p: float | None = None,
                        prior: str = "none", seed: int = 0, min_per_layer: int = 1, removal: str = "physical",
                        estimator_settings: dict | None = None, progress=None,
                        screen: float | None = None, screen_scores=None,
                        on_evaluated: Callable[[int], None] | None = None) -> PruningPlan:
    """Remove `fraction` (or k) of the heads in steps of `step_fraction` of all heads, re-valuing the
    survivors with weighted Banzhaf values before every step; `budget` evaluations split evenly.

    game: a game over every head of `loaded` (model_game / objective_game), any ablation mode.
    prior: "none" or "gradient" (gate gradients at the step's operating point, shrinkage target).
    screen, screen_scores: value only the `screen` x step-size survivors that `screen_scores(removed)`
    (e.g. pruning.screening.gate_gradient_screen) scores lowest; the other survivors stay present, and
    p defaults to 1 - step size / candidates (1/2 for screen=2): the budget goes where the decision is.
    progress(step record) after each step; on_evaluated(n) after every batch of new evaluations.
    The plan's removal mode follows the game's ablation (mean -> mean_compensated).
    """
    heads = loaded.components.heads
    if list(game.players) != heads:
        raise PruningError(f"iterative_head_plan needs a game over all {len(heads)} heads of this model in order "
                           f"(model_game(model, batch, metric, 'heads')); got {game.n_players} players")
    if prior not in ("none", "gradient"):
        raise PruningError(f"prior must be 'none' or 'gradient', got {prior!r}")
    k, step, sizes, per_step = _schedule_for(len(heads), budget, fraction, k, step_fraction, screen, screen_scores,
                                             ols=prior == "none" and (estimator_settings or {}).get("method", "ols") == "ols")
    store_dir = Path(store_dir)
    comps = loaded.components
    layer_of = lambda name: comps.parse(name).layer  # noqa: E731
    left = {layer: comps.n_heads[layer] for layer in range(comps.n_layers)}
    removed: list[str] = []
    steps = []
    for number, size in enumerate(sizes):
        step_dir = store_dir / f"step{number:02d}"
        playing = None
        if screen is not None:
            from pruning.screening import candidates

            scores = screen_scores(list(removed))
            playing = candidates(scores, min(len(scores), math.ceil(screen * size)))
            playing = [name for name in game.players if name in set(playing)]  # model order
        sub = survivor_game(game, removed, store=step_dir / "store", players=playing, on_evaluated=on_evaluated)
        step_p = p if p is not None else 1.0 - size / sub.n_players
        prior_vector = None
        if prior == "gradient":
            from probes.priors import gate_gradient_prior

            prior_vector = gate_gradient_prior(sub, np.full(sub.n_players, step_p))
        before = sub.n_evaluations
        values = weighted_banzhaf(sub, per_step, seed=seed * 1000 + number, p=step_p, prior=prior_vector,
                                  **(estimator_settings or {}))
        values.save(step_dir / "values.json")
        chosen = _select(values, size, left, layer_of, min_per_layer)
        removed.extend(chosen)
        steps.append({"step": number, "removed": chosen, "p": step_p, "n_players": sub.n_players,
                      "n_evaluations": values.n_evaluations, "new_evaluations": sub.n_evaluations - before,
                      "values_file": str(step_dir / "values.json"), "full_value": values.full_value,
                      "candidates": playing})
        if progress:
            progress(steps[-1])
    settings = {"method": "weighted_banzhaf", "p": p, "p_per_step": [s["p"] for s in steps], "prior": prior,
                "fraction": fraction, "k": k, "step_fraction": step_fraction, "step": step, "budget": budget,
                "budget_per_step": per_step, "seed": seed, "min_per_layer": min_per_layer,
                "ablation": game.fingerprint.get("ablation"),
                "objective": game.objective or game.fingerprint.get("objective"),
                "estimator_settings": estimator_settings or {}, "screen": screen,
                "screen_scores": getattr(screen_scores, "__name__", None) if screen_scores else None}
    return _plan_from_steps(game, loaded, removed, removal, settings, steps)


def _plan_from_steps(game: Game, loaded: LoadedModel, removed: list[str], removal: str, settings: dict,
                     steps: list[dict]) -> PruningPlan:
    """The plan with its replayable record; removal follows the game's ablation (mean -> compensated)."""
    record = {"policy": "iterative_head_plan", "settings": settings, "steps": steps,
              "game_fingerprint": {k_: v for k_, v in game.fingerprint.items() if k_ != "players"}}
    ablation = game.fingerprint.get("ablation")
    removal_mode, calibration = "zero", None
    if ablation == "mean":  # the game's mean ablation is what a compensated export reproduces
        removal_mode = "mean_compensated"
        calibration = {"source": "the game's mean-ablation reference batch",
                       "digest": game.fingerprint.get("reference_digest")}
    return PruningPlan(model_identity(loaded), heads=removed, head_removal=removal, provenance=[record],
                       removal_mode=removal_mode, calibration=calibration)


def n_steps(n_heads: int, fraction: float, step_fraction: float) -> int:
    """How many steps iterative_head_plan will take (for budgeting)."""
    k = int(round(fraction * n_heads))
    return math.ceil(k / max(1, int(round(step_fraction * n_heads))))
