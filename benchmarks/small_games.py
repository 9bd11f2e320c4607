"""Error of the Shapley estimators on small games (n <= 12), from the smallest budget to near 2^n.

    python benchmarks/small_games.py [--seeds 10] [--no-peer] [--no-model-game] [--only chain_krr ...]

benchmarks/estimators.py measures 16-256 players at 2n-20n; this script covers the other end, where
a budget can approach the game's 2^n coalitions and the estimators' small-sample behaviour and
their use of the enumerated strata decide the error. Games: SOUM at n = 7, 10, 12, the tanh of a
pairwise game at n = 8 and 12 (truth by enumeration), the saturating score at n = 10, and (unless
--no-model-game) SmolLM2-135M's word values of a 7-word prompt (benchmarks/input_values.py's
accuracy game: all 2^7 coalitions evaluated once, cached in --table-cache, truth by exact).
Budgets per game (small_budgets): the minimum n + 2, 2n, 4n, 8n and 25/50/75/90% of 2^n, those
below 2^n. Same estimators, scoring and shapiq 1.8 peer as estimators.py (its run_benchmark,
start_peer, merge_peer, summarize); writes benchmarks/results/small_games.json with, per budget
label, the worst ratio over games of the default's error to the best alternative's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from probes.estimators.exact import exact_shapley  # noqa: E402
from probes.game import Game  # noqa: E402
from probes.synthetic_games import saturating_game, saturating_score_game, soum_game  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402
from benchmarks.estimators import ensure_peer_python, merge_peer, run_benchmark, start_peer, summarize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "small_games.json"
FRACTIONS_OF_ALL = (0.25, 0.5, 0.75, 0.9)


def small_budgets(n: int) -> dict[str, int]:
    """{label: budget}: the minimum (n + 2), 2n, 4n, 8n and fractions of 2^n, those below 2^n."""
    plan = {"min": n + 2, "2n": 2 * n, "4n": 4 * n, "8n": 8 * n}
    plan.update({f"{round(100 * f)}%": int(round(f * 2**n)) for f in FRACTIONS_OF_ALL})
    return {label: budget for label, budget in sorted(plan.items(), key=lambda kv: kv[1]) if budget < 2**n}


def table_game(table: np.ndarray, players: list[str], fingerprint: dict) -> Game:
    """The game whose value at coalition S is table[bit mask of S] (player i = bit i)."""
    powers = 1 << np.arange(len(players), dtype=np.int64)
    return Game(players, lambda c: table[np.asarray(c, dtype=bool).astype(np.int64) @ powers], fingerprint)


def smollm2_word_game(cache: Path, words: int = 7) -> tuple[Game, np.ndarray]:
    """SmolLM2-135M's word values on input_values.py's accuracy prompt: all 2^words values, cached."""
    if not cache.exists():
        import surgery
        from benchmarks.input_values import prompt_of
        from probes.inputs import input_game

        loaded = surgery.load("smollm2-135m")
        prompt = " ".join(prompt_of(loaded.tokenizer, 60).split(" ")[:words])
        game = input_game(loaded, prompt, " the", players="words", removal="replace", filler="space", max_rows=32)
        codes = np.arange(1 << game.n_players)
        table = game(((codes[:, None] >> np.arange(game.n_players)) & 1).astype(bool))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"prompt": prompt, "players": list(game.players), "table": table.tolist()}))
    data = json.loads(cache.read_text())
    table = np.asarray(data["table"], dtype=float)
    fingerprint = {"model": "smollm2-135m", "task": "words", "prompt": data["prompt"], "metric": "logprob(' the')"}
    game = table_game(table, data["players"], fingerprint)
    return game, exact_shapley(table_game(table, data["players"], fingerprint)).means


def small_games(model_game: bool, cache: Path) -> dict[str, tuple[Game, np.ndarray]]:
    games = {}
    for n in (7, 10, 12):
        known = soum_game(n, seed=n)
        games[f"soum_{n}"] = (known.game, known.shapley)
    for n in (8, 12):
        known = saturating_game(n, seed=n)
        games[f"tanh_pairwise_{n}"] = (known.game, known.shapley)
    known = saturating_score_game(10, seed=10)
    games["saturating_score_10"] = (known.game, known.shapley)
    if model_game:
        games["smollm2_words_7"] = smollm2_word_game(cache)
    return games


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", default=None, help="run only these estimators (names as in the table)")
    parser.add_argument("--peer-python", type=Path, default=None, help="Python >= 3.12 with shapiq 1.8 (as estimators.py)")
    parser.add_argument("--no-peer", action="store_true", help="skip the newest shapiq")
    parser.add_argument("--no-model-game", action="store_true", help="skip the SmolLM2 word game")
    parser.add_argument("--table-cache", type=Path, default=Path("/tmp/small_games_smollm2_words7.json"),
                        help="where the SmolLM2 word game's 2^7 values are kept (computed once, ~1 min)")
    return parser


def main() -> None:
    from probes.estimators.reliability import UnstableRankingWarning

    warnings.simplefilter("ignore", UnstableRankingWarning)  # small budgets are measured on purpose
    warnings.filterwarnings("ignore", message="budget .* exceeds")
    args = make_parser().parse_args()
    start = time.perf_counter()
    games = small_games(not args.no_model_game, args.table_cache)
    seeds = tuple(range(args.seeds))
    with tempfile.TemporaryDirectory() as workdir:
        peer = None
        if not args.no_peer:
            peer = start_peer(ensure_peer_python(args.peer_python), games, small_budgets, seeds, Path(workdir))
        results = run_benchmark(games, small_budgets, seeds=seeds, only=args.only)
        if peer is not None:
            process, answer = peer
            if process.wait() != 0:
                raise SystemExit(f"the shapiq peer worker failed (exit {process.returncode}); see its output above")
            merge_peer(results, json.loads(answer.read_text()), games, small_budgets)
    results["budgets"] = {name: small_budgets(game.n_players) for name, (game, _) in games.items()}
    results["summary"] = summarize(results, DEFAULT_ESTIMATOR, small_budgets)
    results["shapiq_versions"] = {"main": importlib.metadata.version("shapiq"),
                                  "peer": results.get("shapiq_peer", {}).get("version")}
    results["total_seconds"] = time.perf_counter() - start
    write_results(args.output, results, args)
    summary = results["summary"]
    print(f"\nsummary (default = {summary['default_estimator']}), worst error ratio to the best alternative:")
    for key, entry in summary["per_budget"].items():
        game = entry["worst_game"]
        print(f"  {key:>4s}: {entry['worst_error_ratio_default_vs_best_alternative']:.3f} ({game}, best alternative "
              f"{entry['per_game'][game]['best_alternative']})")
    print(f"  goal met: {summary['goal_met_no_worse_than_best_alternative']}; wrote {args.output} "
          f"in {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
