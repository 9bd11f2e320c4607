"""Input (token/word) values on SmolLM2: speed against captum 0.9, error per evaluation against exact.

Speed: coalitions per second of our batched input game against captum's LLMAttribution with
ShapleyValueSampling and KernelShap, on the same prompt, target, players (tokens), removal (one
filler token per removed token) and baseline, side by side in one run, for prompts of about 20
and 50 tokens (cut from the built-in text corpus; longer prompts do not fit the 10-minute budget on
a shared 2-core machine, where captum's one-coalition forwards take minutes). Also the chat-template
prefix computed once (KV cache) against recomputed, on the same coalitions.
Error: on a prompt of `--words` word players, the exact values (all 2^n coalitions, evaluated once
by our game), then at each budget our estimators and captum's ShapleyValueSampling / KernelShap
run on that same table of coalition values (captum through a forward function that looks the
coalition up), so error per evaluation compares the estimators alone. Relative L2 error and
Spearman rank correlation against exact, mean over seeds. Writes benchmarks/results/input_values.json.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import surgery  # noqa: E402
from probes.estimators import get_estimator  # noqa: E402
from probes.estimators.reliability import UnstableRankingWarning  # noqa: E402
from probes.game import Game  # noqa: E402
from probes.inputs import input_game  # noqa: E402
from probes.tasks.builtin_text import stdlib_docs_text  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402

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


def speed_row(loaded, prompt: str, target: str, filler: int, n_ours: int, captum_samples: dict) -> dict:
    from captum.attr import KernelShap, LLMAttribution, ShapleyValueSampling, TextTokenInput

    game = input_game(loaded, prompt, target, players="tokens", removal="replace", filler=filler, max_rows=32)
    rng = np.random.default_rng(0)
    game(rng.random((4, game.n_players)) < 0.5)  # warm-up, untimed: captum's first forward is amortised too
    coalitions = rng.random((n_ours, game.n_players)) < 0.5
    before, t0 = game.n_evaluations, time.perf_counter()
    game(coalitions)
    ours = (game.n_evaluations - before) / (time.perf_counter() - t0)
    row = {"prompt_tokens": len(game.prepared.ids), "players": game.n_players, "target_tokens": len(game.prepared.target),
           "ours_coalitions": game.n_evaluations - before, "ours_per_s": ours}
    inp = TextTokenInput(prompt, loaded.tokenizer, baselines=filler)
    for name, (method, kwargs) in {"shapley_value_sampling": (ShapleyValueSampling, captum_samples["svs"]),
                                   "kernel_shap": (KernelShap, captum_samples["kernel"])}.items():
        calls = {"n": 0}
        body = loaded.model.get_submodule(loaded.adapter.body)  # captum calls model.forward, which skips hooks on the model
        handle = body.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
        t0 = time.perf_counter()
        LLMAttribution(method(loaded.model), loaded.tokenizer).attribute(
            inp, target=game.prepared.target, forward_in_tokens=False, **kwargs)
        seconds = time.perf_counter() - t0
        handle.remove()
        row[f"captum_{name}_coalitions"] = calls["n"]
        row[f"captum_{name}_per_s"] = calls["n"] / seconds
        row[f"ratio_vs_{name}"] = ours / (calls["n"] / seconds)
    return row


def prefix_row(loaded, prompt: str, target: str, n_coalitions: int) -> dict:
    """Coalitions/s with and without computing the shared chat-template prefix once (KV cache)."""
    row, results = {}, {}
    coalitions = None
    for reuse in (False, True):
        game = input_game(loaded, prompt, target, players="words", removal="replace", filler="space", chat=True,
                          reuse_prefix=reuse, max_rows=32)
        if coalitions is None:
            coalitions = np.random.default_rng(1).random((n_coalitions, game.n_players)) < 0.5
        t0 = time.perf_counter()
        results[reuse] = game(coalitions)
        row[f"{'reuse' if reuse else 'no_reuse'}_per_s"] = n_coalitions / (time.perf_counter() - t0)
        row.update(prompt_tokens=len(game.prepared.ids), players=game.n_players,
                   shared_prefix_tokens=game.removal.prefix.length if reuse else row.get("shared_prefix_tokens"))
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
    rows = []
    for budget in budgets:
        for method in ours + ["captum_shapley_value_sampling", "captum_kernel_shap"]:
            errs, rhos, used = [], [], []
            for seed in range(seeds):
                if method.startswith("captum_"):
                    phi, evals = captum_on_table(method[len("captum_"):], table, n, budget, seed)
                else:
                    lookup = Game(game.players, lambda c: table[(c.astype(np.int64) << np.arange(n)).sum(1)])
                    values = get_estimator(method)(lookup, budget=budget, seed=seed)
                    phi, evals = values.means, lookup.n_evaluations
                errs.append(float(np.linalg.norm(phi - exact.means) / np.linalg.norm(exact.means)))
                rhos.append(spearman(phi, exact.means))
                used.append(evals)
            rows.append({"budget": budget, "method": method, "rel_error": float(np.mean(errs)),
                         "spearman": float(np.mean(rhos)), "evaluations": float(np.mean(used))})
            print(f"budget {budget:4d} {method:34s} rel.err {rows[-1]['rel_error']:.3f}  spearman "
                  f"{rows[-1]['spearman']:.3f}  evals {rows[-1]['evaluations']:.0f}", flush=True)
    return info, rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--speed-tokens", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--ours-coalitions", type=int, default=32)
    parser.add_argument("--words", type=int, default=7, help="word players of the accuracy prompt (exact: 2^words)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    # Low-budget runs warn that their ranking is unstable: that is what this benchmark measures.
    warnings.filterwarnings("ignore", category=UnstableRankingWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    loaded = surgery.load(args.model)
    filler = loaded.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    report = {"benchmark": "input_values", "model": args.model, "threads": args.threads, "speed": [], "accuracy": None}
    t_start = time.perf_counter()
    accuracy_prompt = " ".join(prompt_of(loaded.tokenizer, 60).split(" ")[:args.words])
    info, rows = accuracy_rows(loaded, accuracy_prompt, " the", args.budgets, args.seeds,
                               ["chain_krr", "permutation", "kernel_shap"])
    report["accuracy"] = {"prompt": accuracy_prompt, **info, "rows": rows}
    write_results(args.out, report, args)  # partial results as they come
    for n_tokens in args.speed_tokens:
        prompt = prompt_of(loaded.tokenizer, n_tokens, skip=200)
        row = speed_row(loaded, prompt, " the", filler, args.ours_coalitions,
                        {"svs": {"n_samples": 1}, "kernel": {"n_samples": 16}})
        report["speed"].append(row)
        print(f"{row['prompt_tokens']:4d} tokens: ours {row['ours_per_s']:.1f} coalitions/s; captum "
              f"ShapleyValueSampling {row['captum_shapley_value_sampling_per_s']:.1f}/s "
              f"(x{row['ratio_vs_shapley_value_sampling']:.1f}), KernelShap {row['captum_kernel_shap_per_s']:.1f}/s "
              f"(x{row['ratio_vs_kernel_shap']:.1f})", flush=True)
        write_results(args.out, report, args)
    prompt = prompt_of(loaded.tokenizer, 20, skip=400)
    report["prefix_reuse"] = prefix_row(loaded, prompt, " the", args.ours_coalitions // 2)
    print(f"chat template prefix reuse ({report['prefix_reuse']['shared_prefix_tokens']} of "
          f"{report['prefix_reuse']['prompt_tokens']} tokens shared): x{report['prefix_reuse']['speedup']:.2f} "
          f"coalitions/s", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    write_results(args.out, report, args)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
