"""Input (token/word) values on SmolLM2: speed against captum 0.9, error per evaluation.

Speed (benchmarks/input_values_speed.py): coalitions per second of our batched input game against
captum's LLMAttribution with ShapleyValueSampling and KernelShap, on the same prompt, target,
players (tokens), removal (one filler token per removed token) and baseline, for prompts of 20, 100
and 200 tokens, in float32 and bfloat16, all four interleaved in rounds in one run. Ratios are
reported at equal dtype (ours fp32 / captum fp32, ours bf16 / captum bf16) and as each tool's
typical setting (ours bf16 / captum fp32), per wall second and per CPU second of this process; the bf16 game's coalition values are compared with
fp32's. Load average before and after each row is recorded: the machine is shared, rates are noisy.
Per prompt also the bare forward (`ceiling`: the model's blocks on 8 and 32 rows with the projection
at the last position, no game), the most batching could give ours, and its ratio to captum's rate.
Also drop mode's padding (tokens fed, rows sorted by length vs given order) and the chat-template
prefix computed once (KV cache) against recomputed (alternating rounds after a warm-up, median).
Error, exact: on a prompt of `--words` word players, the exact values (all 2^n coalitions), then at
each budget our estimators and captum's ShapleyValueSampling / KernelShap on that same table of
coalition values, so error per evaluation compares the estimators alone; plus exact values in
bfloat16 against float32. Error, reference: on a prompt of `--ref-words` word players (too many for
exact), a kernel_shap reference at `--ref-multiplier` x the smallest budget (its own standard
error recorded), then ours and captum's at each budget on
the same game (captum's coalitions recorded, evaluated by our game, replayed). Relative L2 error and
Spearman against exact / reference, mean over seeds. Writes benchmarks/results/input_values.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import surgery  # noqa: E402
from probes.estimators import get_estimator  # noqa: E402
from probes.errors import BudgetTooSmallError  # noqa: E402
from probes.estimators.reliability import UnstableRankingWarning  # noqa: E402
from probes.game import Game  # noqa: E402
from probes.inputs import input_game  # noqa: E402
from probes.tasks.builtin_text import stdlib_docs_text  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402
from benchmarks.input_values_speed import ceiling_rows, drop_padding, speed_row  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "input_values.json"


def prompt_of(tokenizer, n_tokens: int, skip: int = 0) -> str:
    """About n_tokens tokens of the built-in corpus, cut at a word boundary, one line."""
    words = " ".join(stdlib_docs_text().split()).split(" ")[skip:]
    text = ""
    for word in words:
        if len(tokenizer(text + " " + word, add_special_tokens=False)["input_ids"]) > n_tokens:
            break
        text = (text + " " + word).strip()
    return text


def prefix_row(loaded, prompt: str, target: str, n_coalitions: int, repeats: int = 3) -> dict:
    """Coalitions/s with and without computing the shared chat-template prefix once (KV cache): the
    median of `repeats` alternating rounds, after a warm-up."""
    row, results, games, times = {}, {}, {}, {False: [], True: []}
    for reuse in (False, True):
        games[reuse] = input_game(loaded, prompt, target, players="words", removal="replace", filler="space",
                                  chat=True, reuse_prefix=reuse, max_rows=32)
    n = games[False].n_players
    games[False](np.ones((1, n), dtype=bool)), games[True](np.ones((1, n), dtype=bool))  # warm-up, untimed
    rng = np.random.default_rng(1)
    for _ in range(repeats):  # fresh coalitions each round (the game remembers what it evaluated)
        coalitions = rng.random((n_coalitions, n)) < 0.5
        for reuse in (False, True):  # alternating, so a change of load hits both
            t0 = time.perf_counter()
            results.setdefault(reuse, []).append(games[reuse](coalitions))
            times[reuse].append(time.perf_counter() - t0)
    for reuse in (False, True):
        row[f"{'reuse' if reuse else 'no_reuse'}_per_s"] = n_coalitions / sorted(times[reuse])[repeats // 2]
    row.update(prompt_tokens=len(games[True].prepared.ids), players=n, repeats=repeats,
               shared_prefix_tokens=games[True].removal.prefix.length)
    results = {k: np.concatenate(v) for k, v in results.items()}
    row["speedup"] = row["reuse_per_s"] / row["no_reuse_per_s"]
    row["max_abs_value_difference"] = float(np.max(np.abs(results[True] - results[False])))
    return row


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def captum_on_table(method_name: str, table: np.ndarray, n: int, budget: int, seed: int) -> tuple[np.ndarray, int]:
    """captum's estimator on the game given by its value table (index = coalition code), same budget."""
    from captum.attr import KernelShap, ShapleyValueSampling

    calls = {"n": 0}
    weights = torch.tensor([1 << i for i in range(n)])

    def forward(present):  # present: [batch, n] floats, 1 = feature kept (baseline 0)
        calls["n"] += present.shape[0]
        codes = ((present > 0.5).long() * weights).sum(dim=1)
        return torch.as_tensor(table[codes.numpy()])

    torch.manual_seed(seed)
    ones, zeros = torch.ones(1, n), torch.zeros(1, n)
    if method_name == "shapley_value_sampling":
        attr = ShapleyValueSampling(forward).attribute(ones, baselines=zeros, n_samples=max(1, budget // (n + 1)))
    else:
        attr = KernelShap(forward).attribute(ones, baselines=zeros, n_samples=budget)
    return attr.detach().double().numpy().reshape(-1), calls["n"]


def captum_on_game(method_name: str, game: Game, budget: int, seed: int) -> tuple[np.ndarray, int]:
    """captum's estimator on our game at `budget`: its coalitions do not depend on the values, so a
    first pass records them, our game evaluates them batched, and a second pass with the same seed
    reads them back."""
    from captum.attr import KernelShap, ShapleyValueSampling

    n, asked = game.n_players, []

    def attribute(forward):
        torch.manual_seed(seed)
        ones, zeros = torch.ones(1, n), torch.zeros(1, n)
        if method_name == "shapley_value_sampling":
            return ShapleyValueSampling(forward).attribute(ones, baselines=zeros, n_samples=max(1, budget // (n + 1)))
        return KernelShap(forward).attribute(ones, baselines=zeros, n_samples=budget)

    def record(present):
        asked.append((present > 0.5).numpy())
        return torch.zeros(present.shape[0], dtype=torch.float64)

    attribute(record)
    coalitions = np.concatenate(asked)
    game(coalitions)
    attr = attribute(lambda present: torch.as_tensor(game((present > 0.5).numpy())))
    return attr.detach().double().numpy().reshape(-1), len(coalitions)


def error_rows(truth: np.ndarray, play, budgets, seeds: int, methods: list[str]) -> list[dict]:
    """Relative L2 error and Spearman of each method at each budget against `truth`, mean over seeds.
    play(method, budget, seed) -> (values, evaluations)."""
    rows = []
    for budget in budgets:
        for method in methods:
            errs, rhos, used = [], [], []
            try:
                play(method, budget, 0) if not method.startswith("captum_") else None
            except BudgetTooSmallError as error:  # e.g. permutation needs 2n + 2: recorded, not run
                rows.append({"budget": budget, "method": method, "skipped": str(error)})
                print(f"budget {budget:5d} {method:34s} skipped: below its minimum budget", flush=True)
                continue
            for seed in range(seeds):
                phi, evals = play(method, budget, seed)
                errs.append(float(np.linalg.norm(phi - truth) / np.linalg.norm(truth)))
                rhos.append(spearman(phi, truth))
                used.append(evals)
            rows.append({"budget": budget, "method": method, "rel_error": float(np.mean(errs)),
                         "spearman": float(np.mean(rhos)), "evaluations": float(np.mean(used))})
            print(f"budget {budget:5d} {method:34s} rel.err {rows[-1]['rel_error']:.3f}  spearman "
                  f"{rows[-1]['spearman']:.3f}  evals {rows[-1]['evaluations']:.0f}", flush=True)
    return rows


def accuracy_rows(loaded, prompt: str, target: str, budgets, seeds: int, ours: list[str]) -> tuple[dict, list]:
    game = input_game(loaded, prompt, target, players="words", removal="replace", filler="space", max_rows=32)
    t0 = time.perf_counter()
    exact = get_estimator("exact")(game)
    exact_seconds = time.perf_counter() - t0
    n = game.n_players
    codes = np.arange(1 << n)
    table = game(((codes[:, None] >> np.arange(n)) & 1).astype(bool))  # from the game's memory: no forward
    info = {"players": n, "prompt_tokens": len(game.prepared.ids), "exact_seconds": exact_seconds,
            "exact_values": exact.means.tolist(), "names": list(game.players)}

    def play(method, budget, seed):
        if method.startswith("captum_"):
            return captum_on_table(method[len("captum_"):], table, n, budget, seed)
        lookup = Game(game.players, lambda c: table[(c.astype(np.int64) << np.arange(n)).sum(1)])
        return get_estimator(method)(lookup, budget=budget, seed=seed).means, lookup.n_evaluations

    rows = error_rows(exact.means, play, budgets, seeds, ours + ["captum_shapley_value_sampling", "captum_kernel_shap"])
    return info, rows


def bf16_exact_row(model: str, prompt: str, target: str, fp32_values: np.ndarray) -> dict:
    """Exact values of the same word game played in bfloat16, against float32's."""
    game = input_game(surgery.load(model, dtype=torch.bfloat16), prompt, target, players="words",
                      removal="replace", filler="space", max_rows=32)
    values = get_estimator("exact")(game).means
    return {"rel_error_vs_float32": float(np.linalg.norm(values - fp32_values) / np.linalg.norm(fp32_values)),
            "spearman_vs_float32": spearman(values, fp32_values), "bfloat16_values": values.tolist()}


def reference_rows(loaded, prompt: str, target: str, budgets, seeds: int, multiplier: int,
                   ours: list[str]) -> tuple[dict, list]:
    """Errors against a multiplier x budget reference on a game too big for exact, all on one game."""
    game = input_game(loaded, prompt, target, players="words", removal="replace", filler="space", max_rows=32)
    t0 = time.perf_counter()
    reference = get_estimator("kernel_shap")(game, budget=multiplier * min(budgets), seed=12345)
    info = {"players": game.n_players, "prompt_tokens": len(game.prepared.ids), "reference_estimator": "kernel_shap",
            "reference_budget": multiplier * min(budgets), "reference_evaluations": game.n_evaluations,
            "reference_seconds": time.perf_counter() - t0, "reference_values": reference.means.tolist(),
            "reference_stderr_rel_norm": float(np.linalg.norm(reference.stderrs) / np.linalg.norm(reference.means)),
            "names": list(game.players)}
    print(f"reference: {info['reference_evaluations']} evaluations, {info['reference_seconds']:.0f} s, "
          f"stderr/|phi| {info['reference_stderr_rel_norm']:.3f}", flush=True)

    def play(method, budget, seed):
        if method.startswith("captum_"):
            return captum_on_game(method[len("captum_"):], game, budget, seed)
        counted = Game(game.players, game)  # the real game (and its memory) behind an evaluation counter
        return get_estimator(method)(counted, budget=budget, seed=seed).means, counted.n_evaluations

    rows = error_rows(reference.means, play, budgets, seeds,
                      ours + ["captum_shapley_value_sampling", "captum_kernel_shap"])
    return info, rows


def ceiling_line(row: dict) -> str:
    """The bare-forward rates of a speed row, in words."""
    parts = []
    for dtype, cells in row["ceiling"].items():
        rates = ", ".join(f"{c['rows']} rows {c['tokens_per_s']:.0f} tok/s" for c in cells)
        parts.append(f"{dtype} {rates} (x{row['ceiling_vs_captum'][dtype]:.2f} captum's best)")
    fed = row["prompt_tokens"] + row["target_tokens"] - 1
    return (f"bare forward, no game: {'; '.join(parts)}; ours {row['ours_float32_per_s'] * fed:.0f} tok/s fp32, "
            f"{row['ours_bfloat16_per_s'] * fed:.0f} bf16")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--speed-tokens", type=int, nargs="+", default=[20, 100, 200])
    parser.add_argument("--ours-coalitions", type=int, default=8, help="ours, per round and dtype")
    parser.add_argument("--captum-calls", type=int, default=3, help="captum forwards, per round, method and dtype")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=8)
    parser.add_argument("--words", type=int, default=7, help="word players of the exact prompt (exact: 2^words)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ref-words", type=int, default=14, help="word players of the reference prompt")
    parser.add_argument("--ref-budgets", type=int, nargs="+", default=[16, 32],
                        help="at least players + 2 (chain_krr's minimum)")
    parser.add_argument("--ref-multiplier", type=int, default=100, help="reference budget: this x the smallest budget")
    parser.add_argument("--ref-seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="keep the speed, drop_padding and accuracy sections already in --out; run the rest")
    parser.add_argument("--out", default=str(RESULTS))
    return parser


RESUMED_SETTINGS = ("model", "speed_tokens", "ours_coalitions", "captum_calls", "rounds", "max_rows", "words",
                    "budgets", "seeds", "threads")


def resumable_sections(args) -> dict:
    """With --resume, the speed, drop_padding and accuracy sections of an earlier run of the same
    settings in --out (kept with that run's record as "resumed_from"); else {}."""
    out = Path(args.out)
    if not args.resume or not out.exists():
        return {}
    import json

    old = json.loads(out.read_text())
    keys = ("speed", "drop_padding", "accuracy", "load_average_start")
    settings = old.get("run", {}).get("settings", {})
    same = all(settings.get(k) == getattr(args, k) for k in RESUMED_SETTINGS)
    if not same or any(old.get(k) is None for k in keys) or len(old["speed"]) != len(args.speed_tokens):
        return {}
    return {**{k: old[k] for k in keys}, "resumed_from": old.get("run", {})}


def first_sections(report: dict, args, loaded) -> None:
    """Drop-mode padding, and errors against exact values on the small prompt (fp32 and bf16)."""
    report["drop_padding"] = drop_padding(loaded, prompt_of(loaded.tokenizer, 100, skip=200), " the",
                                          n_coalitions=256, max_rows=args.max_rows)
    print(f"drop mode: {report['drop_padding']['fed_tokens_saved']:.1%} fewer tokens fed with rows sorted by length")
    accuracy_prompt = " ".join(prompt_of(loaded.tokenizer, 60).split(" ")[:args.words])
    info, rows = accuracy_rows(loaded, accuracy_prompt, " the", args.budgets, args.seeds,
                               ["chain_krr", "permutation", "kernel_shap"])
    report["accuracy"] = {"prompt": accuracy_prompt, **info, "rows": rows,
                          "bfloat16": bf16_exact_row(args.model, accuracy_prompt, " the", np.array(info["exact_values"]))}
    print(f"exact values in bf16 vs fp32: rel.err {report['accuracy']['bfloat16']['rel_error_vs_float32']:.4f}, "
          f"spearman {report['accuracy']['bfloat16']['spearman_vs_float32']:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    # Low-budget runs warn that their ranking is unstable: that is what this benchmark measures.
    warnings.filterwarnings("ignore", category=UnstableRankingWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    models = {"float32": surgery.load(args.model), "bfloat16": surgery.load(args.model, dtype=torch.bfloat16)}
    loaded = models["float32"]
    report = {"benchmark": "input_values", "model": args.model, "threads": args.threads,
              "load_average_start": load_average(), "speed": [], "accuracy": None}
    done = resumable_sections(args)
    if done:
        report.update(done)
        print(f"resumed: speed, drop_padding and accuracy from {args.out} (run {done['resumed_from'].get('git_commit')})")
    t_start = time.perf_counter()
    words = " ".join(stdlib_docs_text().split()).split(" ")
    for n_tokens in ([] if done else args.speed_tokens):
        prompt, load_before = prompt_of(loaded.tokenizer, n_tokens, skip=200), load_average()
        row = speed_row(models, prompt, " the", n_ours=args.ours_coalitions, captum_calls=args.captum_calls,
                        rounds=args.rounds, max_rows=args.max_rows)
        row["load_average_before"], row["load_average_after"] = load_before, load_average()
        # What the same forwards reach with no game around them, and how far that is above captum.
        row["ceiling"] = ceiling_rows(models, row["prompt_tokens"] + row["target_tokens"] - 1)
        row["ceiling_vs_captum"] = {
            dtype: max(c["coalitions_per_s"] for c in row["ceiling"][dtype])
            / max(row[f"captum_{m}_{dtype}_per_s"] for m in ("shapley_value_sampling", "kernel_shap"))
            for dtype in models}
        report["speed"].append(row)
        r = row["ratios"]
        print(f"{row['prompt_tokens']:4d} tokens: ours fp32 {row['ours_float32_per_s']:.2f}/s bf16 "
              f"{row['ours_bfloat16_per_s']:.2f}/s; captum SVS fp32 {row['captum_shapley_value_sampling_float32_per_s']:.2f}/s "
              f"bf16 {row['captum_shapley_value_sampling_bfloat16_per_s']:.2f}/s; equal dtype x"
              f"{r['equal_dtype_float32_vs_shapley_value_sampling']:.2f} (fp32) x{r['equal_dtype_bfloat16_vs_shapley_value_sampling']:.2f}"
              f" (bf16), KernelShap x{r['equal_dtype_float32_vs_kernel_shap']:.2f} / x{r['equal_dtype_bfloat16_vs_kernel_shap']:.2f};"
              f" ours bf16 vs captum fp32 x{r['ours_bfloat16_vs_shapley_value_sampling_float32']:.2f} (SVS) "
              f"x{r['ours_bfloat16_vs_kernel_shap_float32']:.2f} (KernelShap); load {row['load_average_after']}", flush=True)
        c = row["ratios_cpu_time"]
        print(f"      per CPU second: equal dtype x{c['equal_dtype_float32_vs_shapley_value_sampling']:.2f} / "
              f"x{c['equal_dtype_bfloat16_vs_shapley_value_sampling']:.2f} (SVS fp32 / bf16), x"
              f"{c['equal_dtype_float32_vs_kernel_shap']:.2f} / x{c['equal_dtype_bfloat16_vs_kernel_shap']:.2f} "
              f"(KernelShap); ours bf16 vs captum fp32 x{c['ours_bfloat16_vs_shapley_value_sampling_float32']:.2f}"
              f" / x{c['ours_bfloat16_vs_kernel_shap_float32']:.2f}", flush=True)
        print(f"      {ceiling_line(row)}", flush=True)
        write_results(args.out, report, args)  # partial results as they come
    if not done:
        first_sections(report, args, loaded)
        write_results(args.out, report, args)
    ref_prompt = " ".join(words[600:600 + args.ref_words])
    info, rows = reference_rows(loaded, ref_prompt, " the", args.ref_budgets, args.ref_seeds, args.ref_multiplier,
                                ["chain_krr", "permutation", "kernel_shap"])
    report["reference_accuracy"] = {"prompt": ref_prompt, **info, "rows": rows, "load_average": load_average()}
    write_results(args.out, report, args)
    prompt = prompt_of(loaded.tokenizer, 20, skip=400)
    report["prefix_reuse"] = prefix_row(loaded, prompt, " the", 16)
    print(f"chat template prefix reuse ({report['prefix_reuse']['shared_prefix_tokens']} of "
          f"{report['prefix_reuse']['prompt_tokens']} tokens shared): x{report['prefix_reuse']['speedup']:.2f} "
          f"coalitions/s", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    report["load_average_end"] = load_average()
    write_results(args.out, report, args)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
