"""Does a first-order prior (gate gradients) lower the error per evaluation of weighted Banzhaf values?

Games with a known truth (closed form or exact enumeration of all 2^n coalitions):
- synthetic: saturating_score_game (v = z - z^3/3, z linear in the players, dense interactions);
  its "gates" continuation v(x) is analytic, so the prior is its gradient w_i (1 - z(b)^2).
- tiny GPT-2 (12 heads) and SmolLM2-135M (10 heads of layers 27-29, every other head present;
  4 built-in text sequences of 32 tokens, last 8 positions scored), keep-the-model objective (KL to the full model on built-in calibration text) and LM
  loss, mean ablation; prior = d v / d gate by autograd (probes.priors).
Priors are taken at the full model (base "full", Michel / attribution patching) and at gates = p
(base "p", the centre of the Bernoulli(p) measure). Each estimator: least squares without prior
("ols"), least squares shrunk toward the prior with the shrinkage chosen by GCV ("ols+prior"),
difference of means ("msr") and difference of means with the prior as control variate
("msr+prior"). Error: ||estimate - truth|| / ||truth||, mean over seeds.

    PYTHONPATH=$PWD python benchmarks/weighted_banzhaf_prior.py [--skip-smollm | --only-smollm] [--seeds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probes.estimators.weighted_banzhaf import exact_weighted_banzhaf, weighted_banzhaf  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402
from probes.synthetic_games import saturating_score_game  # noqa: E402

P = 0.9
VARIANTS = {"ols": ("ols", False), "ols+prior": ("ols", True), "msr": ("msr", False), "msr+prior": ("msr", True)}


def errors(game, truth, prior, budgets, seeds):
    rows = {}
    for budget in budgets:
        for name, (method, use_prior) in VARIANTS.items():
            errs = []
            for seed in range(seeds):
                try:
                    v = weighted_banzhaf(game, budget, seed=seed, p=P, method=method, exact=False,
                                         prior=prior if use_prior else None)
                except ValueError:
                    errs = None
                    break
                errs.append(np.linalg.norm(v.means - truth) / np.linalg.norm(truth))
            rows[f"{name}@{budget}"] = None if errs is None else {
                "mean": float(np.mean(errs)), "se": float(np.std(errs, ddof=1) / np.sqrt(len(errs)))}
    return rows


def synthetic(seeds):
    known = saturating_score_game(100, seed=0)
    singles = known.game.value_function(np.eye(100, dtype=bool))
    # v({i}) = w_i - w_i^3 / 3; recover the (small) per-player weight w_i by fixed-point iteration.
    wi = singles.copy()
    for _ in range(50):
        wi = singles + wi**3 / 3
    truth = known.weighted_banzhaf(P)
    out = {"game": known.description, "p": P, "n_players": 100}
    for base_name, base in (("full", 1.0), ("p", P)):
        z = base * wi.sum()
        prior = wi * (1 - z**2)
        out[f"prior_{base_name}_error"] = float(np.linalg.norm(prior - truth) / np.linalg.norm(truth))
        out[f"base_{base_name}"] = errors(known.game, truth, prior, [150, 300, 1000], seeds)
    return out


def model_game_rows(loaded, players, measure, seeds, budgets, label, n_text=2, seq_len=48, last_positions=None):
    from probes.objective import keep_model_objective, objective_game
    from probes.priors import gate_gradient_prior
    from probes.tasks.text import text_task
    from surgery.batch import TokenBatch

    task = text_task(n=n_text, seq_len=seq_len)
    tokens = task.batch(loaded.tokenizer, seed=0).tokens
    source = f"{task.settings['source']} (seq_len {seq_len}, n {n_text}, seed 0)"
    if last_positions:  # score only the last positions: the vocabulary projection dominates CPU time
        tokens = TokenBatch(tokens.input_ids, tokens.attention_mask, tokens.score_positions[:, -last_positions:],
                            tokens.targets[:, -last_positions:])
        source += f", last {last_positions} positions scored"
    objective = keep_model_objective(loaded, tokens, measure=measure, source=source)
    game = objective_game(loaded, objective, players, mode="mean", max_rows=128)
    start = time.time()
    truth = exact_weighted_banzhaf(game, P)
    out = {"game": label, "measure": measure, "p": P, "n_players": game.n_players,
           "exact_seconds": round(time.time() - start, 1), "objective": objective.describe()}
    for base_name, base in (("full", None), ("p", np.full(game.n_players, P))):
        prior = gate_gradient_prior(game, base)
        out[f"prior_{base_name}_error"] = float(np.linalg.norm(prior - truth) / np.linalg.norm(truth))
        out[f"base_{base_name}"] = errors(game, truth, prior, budgets, seeds)  # all answered from memory
    return out


def summarize(result: dict) -> list[dict]:
    """Per game and budget: error of each prior variant over the same estimator without it (< 1 helps)."""
    rows = []
    for game in result["games"]:
        for base in ("full", "p"):
            for key, cell in game[f"base_{base}"].items():
                name, budget = key.split("@")
                if not name.endswith("+prior"):
                    continue
                plain = game[f"base_{base}"].get(f"{name[:-6]}@{budget}")
                rows.append({"game": game["game"], "measure": game.get("measure"), "prior_at": base,
                             "estimator": name[:-6], "budget": int(budget),
                             "error_ratio": None if not cell or not plain else round(cell["mean"] / plain["mean"], 3)})
    return rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--skip-smollm", action="store_true")
    parser.add_argument("--only-smollm", action="store_true", help="keep the other games of --out, rerun SmolLM2")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/weighted_banzhaf_prior.json"))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    import torch

    import surgery
    from probes.tasks.tiny_tokenizers import bpe_fast

    torch.manual_seed(0)
    result = {"games": []}
    out = Path(args.out)

    def save():
        result["summary"] = summarize(result)
        write_results(out, result, args)

    if args.only_smollm:
        previous = json.loads(out.read_text())
        result["games"] = [g for g in previous["games"] if "SmolLM2" not in g["game"]]
        # The other games' rows come from an earlier run: its record goes with them.
        result["run_other_games"] = previous.get("run_other_games") or previous.get("run") or {
            "command": previous.get("command_other_games", previous.get("command")),
            "git_commit": previous.get("git_commit_other_games", previous.get("git_commit"))}
    else:
        result["games"].append(synthetic(args.seeds))
        save()
    import transformers as tf

    tokenizer = bpe_fast()
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64,
                                             vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tiny = surgery.load(model, tokenizer=tokenizer)
    for measure in ("kl", "loss") if not args.only_smollm else ():
        result["games"].append(model_game_rows(tiny, "heads", measure, args.seeds, [30, 60, 150],
                                               "tiny GPT-2, 12 heads"))
        save()
    if not args.skip_smollm:
        smollm = surgery.load("smollm2-135m")
        # 10 heads of the last 3 layers (the rest present): the blocks below layer 27 run once per chunk.
        players = [f"L{layer}.H{head}" for layer in (27, 28) for head in (0, 3, 6)] + [
            f"L29.H{head}" for head in (0, 2, 4, 6)]
        for measure in ("kl", "loss"):
            result["games"].append(model_game_rows(smollm, players, measure, args.seeds, [25, 50, 100],
                                                   "SmolLM2-135M, 10 heads of layers 27-29", n_text=4, seq_len=32,
                                                   last_positions=8))
            save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
