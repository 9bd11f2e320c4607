"""Part 2 of benchmarks/amortized.py: the coalition surrogate as a control variate, on synthetic games
(exact values known) and on SmolLM2 induction heads (replayed from head_values.py's stores).
Run through `python benchmarks/amortized.py` (its --surrogate-* and --values-store arguments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_common import make_task, spearman, store_name
from probes.amortized import CoalitionSurrogate, control_variate_shapley
from probes.estimators import DEFAULT_ESTIMATOR
from probes.model_game import model_game
from probes.stopping import MaxEvaluations


def surrogate_benchmark(args) -> dict:
    from probes.estimators import estimate
    from probes.game import Game
    from probes.synthetic_games import saturating_score_game, soum_game

    n = args.surrogate_players
    games = {"saturating_score": saturating_score_game(n, seed=0), "soum": soum_game(n, seed=0)}
    fresh = lambda known: Game(known.game.players, known.game.value_function, known.game.fingerprint)
    grid = [2 * n + 4, 4 * n, 8 * n, 16 * n]
    budget = 4 * n
    out = []
    for game_name, known in games.items():
        error = lambda phi: float(np.linalg.norm(phi - known.shapley) / np.linalg.norm(known.shapley))
        for estimator in ("permutation", "leverage_shap_size"):
            curve = {b: float(np.mean([error(estimate(fresh(known), budget=b, seed=s, estimator=estimator).means)
                                       for s in range(args.surrogate_seeds)])) for b in grid}
            for prior in (4 * n, 16 * n):
                earlier = Game(known.game.players, known.game.value_function, known.game.fingerprint,
                               store=Path(args.store_dir) / f"surrogate-{game_name}-n{n}-prior{prior}")
                estimate(earlier, budget=prior, seed=1000)  # the earlier run whose evaluations are in the store
                for trees in (False, True):
                    surrogate = CoalitionSurrogate(trees=trees, seed=0).fit_store(earlier.store)
                    cv = float(np.mean([error(control_variate_shapley(fresh(known), surrogate, budget=budget, seed=s,
                                                                      estimator=estimator).means)
                                        for s in range(args.surrogate_seeds)]))
                    out.append({"game": game_name, "n_players": n, "estimator": estimator, "stored_evaluations": len(earlier.store),
                                "surrogate": "linear+size" + ("+trees" if trees else ""), "fresh_budget": budget,
                                "plain_error_curve": {str(b): e for b, e in curve.items()},
                                "control_variate_error": cv, "surrogate_alone_error": error(surrogate.shapley()),
                                "plain_budget_for_same_error": _budget_for(curve, cv)})
                    r = out[-1]
                    print(f"  {game_name} {estimator} prior={prior} {r['surrogate']}: plain@{budget} "
                          f"{curve[budget]:.3f}, control variate {cv:.3f}, surrogate alone {r['surrogate_alone_error']:.3f}, "
                          f"plain needs ~{r['plain_budget_for_same_error']}", flush=True)
    return {"settings": {"seeds": args.surrogate_seeds, "error": "relative L2 to the exact Shapley values",
                         "plain_budget_for_same_error": "log-log interpolation of the plain estimator's error curve; "
                                                        "'>max' / '<min' outside the grid"},
            "rows": out}


def real_surrogate_benchmark(args) -> dict | None:
    """The control variate on SmolLM2 induction heads: the surrogate is fitted on the stored
    evaluations of *another batch* of the task (task_seed 1), and corrects estimates of the task_seed 0
    batch. Every coalition is replayed from the two 40,000-evaluation stores of benchmarks/head_values.py
    (seeds 0 and 1, whose designs are cut after the round reaching each budget), so this costs no
    model evaluation; each seed is scored against the other seed's full estimate (independent noise)."""
    import surgery
    from probes.estimators import estimate

    root = Path(args.values_store)
    stores = {s: root / store_name("induction", args.n, 40000, args.dtype, s) for s in (0, 1)}
    other = root / store_name("induction", args.n, args.design, args.dtype, 0, task_seed=1)
    missing = [str(p) for p in (*stores.values(), other) if not (p / "values.jsonl").exists()]
    if missing:
        print(f"  skipped: no store at {missing} (benchmarks/head_values.py and part 1 make them)", flush=True)
        return None
    loaded = surgery.load(args.model, dtype=getattr(torch, args.dtype))
    task = make_task("induction", args.n)

    def game(task_seed, store):
        tb = task.batch(loaded.tokenizer, seed=task_seed)
        return model_game(loaded, tb.tokens, tb.metric(), "heads", store=store,
                          task_name=f"{tb.task}:{tb.default_metric}", max_rows=args.max_rows, batch_size=args.max_rows)

    games = {s: game(0, store) for s, store in stores.items()}
    reference = {s: estimate(g, budget=40000, seed=s).means for s, g in games.items()}
    source = game(1, other)
    cut = lambda b: {"stop": MaxEvaluations(b), "n_rounds": 40}
    rows = []
    for trees in (False, True):
        surrogate = CoalitionSurrogate(trees=trees, seed=0).fit_store(source.store)
        for budget in (1000, 2000, 4000, 8000):
            plain, cv, evaluations = [], [], 0
            for s, g in games.items():
                ref = reference[1 - s]
                error = lambda phi: float(np.linalg.norm(phi - ref) / np.linalg.norm(ref))
                p = estimate(g, budget=40000, seed=s, **cut(budget))
                c = control_variate_shapley(g, surrogate, budget=40000, seed=s, **cut(budget))
                plain.append((error(p.means), spearman(p.means, ref)))
                cv.append((error(c.means), spearman(c.means, ref)))
                evaluations = p.n_evaluations
            plain, cv = np.mean(plain, axis=0), np.mean(cv, axis=0)
            rows.append({"surrogate": "linear+size" + ("+trees" if trees else ""), "evaluations": evaluations,
                         "plain_error": plain[0], "control_variate_error": cv[0],
                         "plain_spearman": plain[1], "control_variate_spearman": cv[1],
                         "surrogate_alone_spearman": spearman(surrogate.shapley(), reference[0])})
            print(f"  induction {rows[-1]['surrogate']} @ {evaluations}: error plain {plain[0]:.3f} -> control variate "
                  f"{cv[0]:.3f}; Spearman {plain[1]:.3f} -> {cv[1]:.3f}", flush=True)
    fresh = sum(g.n_evaluations for g in games.values()) + source.n_evaluations
    if fresh:
        raise RuntimeError(f"{fresh} coalitions were evaluated: the stores do not hold this game's designs")
    plain_curve = {r["evaluations"]: r["plain_error"] for r in rows if r["surrogate"] == "linear+size"}
    for r in rows:
        r["plain_evaluations_for_same_error"] = _budget_for(plain_curve, r["control_variate_error"])
    return {"settings": {"game": "SmolLM2 induction heads, task_seed 0 batch, bfloat16",
                         "surrogate_fitted_on": f"{len(source.store)} stored evaluations of the task_seed 1 batch",
                         "error": "relative L2 to the other seed's 40,000-evaluation estimate (mean over both seeds)",
                         "estimator": DEFAULT_ESTIMATOR},
            "rows": rows}


def _budget_for(curve: dict, target: float):
    budgets = sorted(curve)
    errors = [curve[b] for b in budgets]
    if target <= errors[-1]:
        return f">{budgets[-1]}" if target < errors[-1] else budgets[-1]
    if target >= errors[0]:
        return f"<={budgets[0]}"
    for (b0, e0), (b1, e1) in zip(zip(budgets, errors), zip(budgets[1:], errors[1:])):
        if e1 <= target <= e0 and e0 > e1:
            t = (np.log(e0) - np.log(target)) / (np.log(e0) - np.log(e1))
            return int(round(np.exp(np.log(b0) + t * (np.log(b1) - np.log(b0)))))
    return None
