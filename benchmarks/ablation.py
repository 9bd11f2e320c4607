"""Ablation engine speed on the embedded SmolLM2-135M, CPU, everything side by side in one run.

1. Masked forward overhead: plain HF forward vs the same forward with half the heads zero-ablated
   through the native hooks, a TransformerBridge (hook_z) and nnsight. Full logits everywhere.
2. Coalition throughput for a last-position metric: a naive loop (one full forward with full
   logits per coalition) vs the engine (batched coalitions, logits only at the scored position,
   clean prefix computed once below the first ablated layer), for the layer game and the head game.

Writes benchmarks/results/ablation.json and prints a table.
    python benchmarks/ablation.py [--repeats 5] [--coalitions 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgery  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402
from surgery.backends import bridge_from_hf, bridge_masked_logits, nnsight_from_hf, nnsight_masked_logits  # noqa: E402
from surgery.engine import AblationEngine  # noqa: E402

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "When Mary and John went to the store, John gave a drink to",
    "The keys to the old wooden cabinet in the hallway of the house",
    "In the year 1732 the war began, and it lasted until the year 17",
]


def last_token_logprob(logits, batch):  # logits [c, B, 1, V]
    logp = logits[:, :, -1].float().log_softmax(-1)
    return logp.gather(-1, batch.targets[:, -1].expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)


def masked_forward_overheads(loaded, batch, repeats, seed):
    g = torch.Generator().manual_seed(seed)
    head_keep = torch.rand(30, 9, generator=g) < 0.5
    mask = head_keep.flatten()[None]
    engine = AblationEngine(loaded, "heads")
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    bridge = bridge_from_hf(loaded.model)
    nns = nnsight_from_hf(loaded.model)

    def plain():
        with torch.inference_mode():
            return loaded.model(**kwargs).logits

    def native():
        with torch.inference_mode(), engine.ablated(mask, batch):
            return loaded.model(**kwargs).logits

    def via_bridge():
        return bridge_masked_logits(bridge, batch.input_ids, batch.attention_mask, head_keep)

    def via_nnsight():
        return nnsight_masked_logits(nns, batch.input_ids, batch.attention_mask, head_keep)

    outputs = {name: fn() for name, fn in [("native", native), ("bridge", via_bridge), ("nnsight", via_nnsight)]}
    agree = {name: float((out - outputs["native"]).abs().max()) for name, out in outputs.items()}
    # Interleave the methods round by round so machine noise hits them alike.
    runs = {"plain": [], "native": [], "bridge": [], "nnsight": []}
    fns = {"plain": plain, "native": native, "bridge": via_bridge, "nnsight": via_nnsight}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return med, runs, agree


def coalition_sets(n_players, n, seed, kind):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":  # coalition size uniform, members uniform: what kernel/permutation estimators ask
        sizes = torch.randint(0, n_players + 1, (n,), generator=g)
        ranks = torch.rand(n, n_players, generator=g).argsort(1).argsort(1)
        return ranks < sizes[:, None]
    # "window": the full model minus one contiguous window of 1..4 layers (neighbourhood and
    # sliding-window layer estimators), windows drawn uniformly.
    masks = torch.ones(n, n_players, dtype=torch.bool)
    for i in range(n):
        width = int(torch.randint(1, 5, (1,), generator=g))
        start = int(torch.randint(0, n_players - width + 1, (1,), generator=g))
        masks[i, start:start + width] = False
    return masks


def throughput(loaded, batch, players, masks, max_rows, rounds=2):
    engine = AblationEngine(loaded, players, max_rows=max_rows)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)

    def naive():
        out = []
        for row in masks:
            with torch.inference_mode(), engine.ablated(row[None], batch):
                full = loaded.model(**kwargs).logits  # every position, full vocabulary
            picked = full.gather(1, batch.score_positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
            out.append(last_token_logprob(picked[None], batch))
        return torch.cat(out).double()

    def batched():
        return engine.evaluate(masks, batch, last_token_logprob)

    v_naive, v_engine = naive(), batched()  # also the warm-up
    # Alternate the two over rounds and keep each one's best round: the machine is shared and
    # noisy, and the minimum is the least disturbed measurement of the same work.
    t_naive = t_engine = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter(); naive(); t_naive = min(t_naive, time.perf_counter() - t0)
        t0 = time.perf_counter(); batched(); t_engine = min(t_engine, time.perf_counter() - t0)
    n = masks.shape[0]
    return {"naive_coalitions_per_s": n / t_naive, "engine_coalitions_per_s": n / t_engine,
            "speedup": t_naive / t_engine, "max_value_diff": float((v_naive - v_engine).abs().max()),
            "naive_seconds": t_naive, "engine_seconds": t_engine, "coalitions": n}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--coalitions", type=int, default=32)
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds per game")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ablation.json"))
    return parser


def main():
    args = make_parser().parse_args()
    torch.manual_seed(args.seed)

    loaded = surgery.load("smollm2-135m")
    tok = loaded.tokenizer
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    # Target: the clean model's own next-token prediction at the last position.
    batch = surgery.TokenBatch.last_position(enc.input_ids, enc.attention_mask)
    with torch.inference_mode():
        clean = AblationEngine(loaded, "layers").logits(torch.ones(1, 30, dtype=torch.bool), batch)[0]
    batch = surgery.TokenBatch(batch.input_ids, batch.attention_mask, batch.score_positions, clean.argmax(-1))

    long_enc = tok([" ".join(PROMPTS)] * 4, return_tensors="pt")
    long_batch = surgery.TokenBatch.last_position(long_enc.input_ids)
    med, runs, agree = masked_forward_overheads(loaded, long_batch, args.repeats, args.seed)

    games = {}
    for game, players, kind in [("layer_game_windows", "layers", "window"), ("layer_game_random", "layers", "random"),
                                ("head_game_random", "heads", "random")]:
        n_players = 30 if players == "layers" else 270
        masks = coalition_sets(n_players, args.coalitions, args.seed, kind)
        games[game] = throughput(loaded, batch, players, masks, args.max_rows, args.rounds)

    summary = {
        "native_overhead": med["native"] / med["plain"],
        "bridge_overhead": med["bridge"] / med["plain"],
        "nnsight_overhead": med["nnsight"] / med["plain"],
        "layer_game_speedup": games["layer_game_windows"]["speedup"],
        "layer_game_random_speedup": games["layer_game_random"]["speedup"],
        "head_game_speedup": games["head_game_random"]["speedup"],
    }
    result = {
        "summary": summary,
        "setup": {"model": "smollm2-135m", "device": "cpu", "threads": torch.get_num_threads(),
                  "forward_tokens": list(long_batch.input_ids.shape), "game_batch": list(batch.input_ids.shape),
                  "repeats": args.repeats, "max_rows": args.max_rows, "seed": args.seed,
                  "layer_game_speedup_is": "window coalitions (full model minus 1..4 contiguous layers), "
                                           "the coalitions the layer estimators query"},
        "masked_forward_seconds": {k: {"median": med[k], "runs": runs[k]} for k in med},
        "masked_forward_max_logit_diff_vs_native": agree,
        "games": games,
    }
    write_results(args.out, result, args)

    print(f"masked forward, {tuple(long_batch.input_ids.shape)} tokens, median of {args.repeats}:")
    print(f"  {'method':<10}{'seconds':>10}{'vs plain':>10}{'max |dlogit| vs native':>26}")
    for k in ("plain", "native", "bridge", "nnsight"):
        print(f"  {k:<10}{med[k]:>10.3f}{med[k] / med['plain']:>10.3f}{agree.get(k, 0.0):>26.2e}")
    print(f"coalition throughput, last-position metric, batch {tuple(batch.input_ids.shape)}:")
    print(f"  {'game':<22}{'naive coal/s':>14}{'engine coal/s':>15}{'speedup':>9}{'max |dv|':>11}")
    for name, r in games.items():
        print(f"  {name:<22}{r['naive_coalitions_per_s']:>14.2f}{r['engine_coalitions_per_s']:>15.2f}"
              f"{r['speedup']:>9.2f}{r['max_value_diff']:>11.1e}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
