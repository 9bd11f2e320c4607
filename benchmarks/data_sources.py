"""Data-source values on SmolLM2: trains the worked example's LoRA adapters with hand-written DPO, then
measures seconds per coalition of arithmetic composition against weight-space merging, the exact values,
and the KL of the assumption check (sequential DPO on two sources against their arithmetic composition).

    nice -n 5 python benchmarks/data_sources.py            # ~15-25 min on 2 busy CPU cores

Adapters go to --adapters-dir (committed, so notebooks/08_data_source_values.ipynb loads them instead of
training); an existing adapter is reused when its training record matches the settings. Results stream to
--out after every step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import surgery  # noqa: E402
from probes.estimators.exact import all_coalitions  # noqa: E402
from probes.model_game import model_digest  # noqa: E402
from probes.sources import source_values, sources_game  # noqa: E402
from probes.sources.assumption import assumption_check  # noqa: E402
from probes.sources.data import candidate_evaluation, preference_pairs  # noqa: E402
from probes.sources.dpo import lora_model, sequential_dpo, train_dpo  # noqa: E402
from probes.sources.synthetic import addition_evaluation, addition_sources  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402
from surgery.atomic_io import write_json_atomic  # noqa: E402
from surgery.lora_compose import active, load_adapters  # noqa: E402

ADAPTERS = ROOT / "benchmarks" / "results" / "data_sources"
RESULTS = ROOT / "benchmarks" / "results" / "data_sources.json"
TRAIN_RECORD = "training.json"


def train_or_reuse(directory: Path, settings: dict, train) -> dict:
    """Train into `directory` unless it holds an adapter trained with these settings; return its record."""
    record_path = directory / TRAIN_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            return {**record, "reused": True}
    t0 = time.perf_counter()
    model, losses = train()
    model.save_pretrained(str(directory))
    record = {"settings": settings, "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(record_path, record)
    return record


def train_sources(args, sources, tokenizer, result, save) -> None:
    settings = {"n_pairs": args.n_pairs, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "beta": args.beta, "rank": args.rank, "seed": args.seed, "model": args.model}
    for index, (name, records) in enumerate(sources.items()):
        def train():
            model = lora_model(surgery.load(args.model).model, rank=args.rank, seed=args.seed + index)
            return model, train_dpo(model, preference_pairs(records, tokenizer), epochs=args.epochs, lr=args.lr,
                                    beta=args.beta, batch_size=args.batch_size, seed=args.seed + index)
        result["training"][name] = train_or_reuse(Path(args.adapters_dir) / name, {**settings, "source": name}, train)
        save()
    coalition = args.sequential
    def train_sequential():
        datasets = [preference_pairs(sources[name], tokenizer) for name in coalition]
        return sequential_dpo(surgery.load(args.model).model, datasets, rank=args.rank, seed=args.seed, epochs=args.epochs,
                              lr=args.lr, beta=args.beta, batch_size=args.batch_size)
    result["training"]["sequential"] = train_or_reuse(Path(args.adapters_dir) / ("sequential_" + "+".join(coalition)),
                                                      {**settings, "sequential": coalition}, train_sequential)
    save()


def measure(args, names, evaluation, digest, result, save) -> None:
    adapters = load_adapters(surgery.load(args.model).model, [Path(args.adapters_dir) / n for n in names], names)
    game = sources_game(adapters, evaluation, base=args.model, base_digest=digest)
    coalitions = all_coalitions(len(names))
    with torch.no_grad(), active(adapters, None) as model:  # untimed warm-up: the first forward pays one-off costs
        evaluation.logprob_table(model)
    t0 = time.perf_counter()
    values = source_values(game)  # the first call reads the n + 1 models' log-probabilities
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    arithmetic = evaluation.arithmetic_values(game.value_function.cache, torch.from_numpy(coalitions))
    t_compose = time.perf_counter() - t0
    result["arithmetic"] = {"coalitions": len(coalitions), "exact_values_seconds": round(t_cache, 2),
                            "compose_seconds_all": round(t_compose, 5),
                            "seconds_per_coalition": t_cache / len(coalitions),
                            "values": dict(zip(values.names, values.means.round(4).tolist())),
                            "empty_value": values.empty_value, "full_value": values.full_value}
    save()
    merge = sources_game(adapters, evaluation, composition="merge", base=args.model, base_digest=digest)
    picked = np.linspace(0, len(coalitions) - 1, args.merge_coalitions).round().astype(int)
    t0 = time.perf_counter()
    merged = merge(coalitions[picked])
    t_merge = time.perf_counter() - t0
    result["merge"] = {"coalitions_timed": ["+".join(np.array(names)[c]) or "{}" for c in coalitions[picked]],
                       "seconds_per_coalition": t_merge / len(picked), "values": merged.round(4).tolist(),
                       "arithmetic_values": arithmetic[picked].round(4).tolist()}
    result["merge_over_arithmetic_seconds"] = result["merge"]["seconds_per_coalition"] / result["arithmetic"]["seconds_per_coalition"]
    save()
    sequential_dir = Path(args.adapters_dir) / ("sequential_" + "+".join(args.sequential))
    from peft import PeftModel
    sequential = PeftModel.from_pretrained(surgery.load(args.model).model, str(sequential_dir)).eval()
    result["assumption_check"] = assumption_check(adapters, args.sequential, evaluation, sequential)
    save()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-pairs", type=int, default=8, help="preference pairs per source")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per DPO step")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--n-eval", type=int, default=8, help="held-out addition prompts")
    parser.add_argument("--merge-coalitions", type=int, default=4, help="coalitions timed in merge mode")
    parser.add_argument("--sequential", nargs="+", default=["digits", "words"], help="coalition of the check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapters-dir", default=str(ADAPTERS), help="where the trained adapters are written")
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"training": {}}
    start = time.perf_counter()

    def save():
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_results(args.out, result, args)
    loaded = surgery.load(args.model)
    digest = model_digest(loaded)
    sources = addition_sources(n_pairs=args.n_pairs, seed=args.seed)
    train_sources(args, sources, loaded.tokenizer, result, save)
    evaluation = candidate_evaluation(addition_evaluation(args.n_eval, seed=args.seed), loaded.tokenizer)
    measure(args, list(sources), evaluation, digest, result, save)
    a, m, kl = result["arithmetic"], result["merge"], result["assumption_check"]
    print(f"{'source':<12} {'value':>8}")
    for name, value in a["values"].items():
        print(f"{name:<12} {value:>+8.4f}")
    print(f"v(empty) {a['empty_value']:.4f}  v(all) {a['full_value']:.4f}")
    print(f"seconds per coalition: arithmetic {a['seconds_per_coalition']:.3f} (exact values {a['exact_values_seconds']:.1f} s for "
          f"{a['coalitions']}), merge {m['seconds_per_coalition']:.3f}; ratio {result['merge_over_arithmetic_seconds']:.1f}x")
    print(f"assumption check {kl['coalition']}: KL candidates {kl['kl_candidates']:.4f} (to base "
          f"{kl['kl_candidates_to_base']:.4f}), per token {kl['kl_per_token']:.4f} (to base {kl['kl_per_token_to_base']:.4f})")


if __name__ == "__main__":
    main()
