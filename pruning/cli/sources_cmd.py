"""`surgery values sources`: Shapley values of fine-tuning data sources, one LoRA adapter per source.

Registered into the `values` parser (a third kind next to heads and layers) by one call in values_cmds.
It shares --estimator, --budget, --seed, --store, --out and --force with the other kinds and adds:
--base, --adapters, --names, --prompts, --reward, --evaluation, --composition, --max-new-tokens.
"""

from __future__ import annotations

import time

from pruning.cli.common import (CLIError, add_values_kind, check_distinct_outputs, check_output, check_store,
                                check_values_args)

SOURCE_FLAGS = (("adapters", "--adapters"), ("prompts", "--prompts"), ("names", "--names"), ("reward", "--reward"))
EVALUATIONS = ("candidates", "targets", "generate")


def add_sources_kind(parser) -> None:
    """Make `values` accept the kind `sources` and its flags; other kinds run as before."""
    group = parser.add_argument_group("data sources (`surgery values sources`)")
    group.add_argument("--base", default="smollm2-135m", help="base model the adapters were trained on")
    group.add_argument("--adapters", nargs="+", default=None, metavar="DIR",
                       help="one peft LoRA adapter directory per data source (the players)")
    group.add_argument("--names", nargs="+", default=None, help="source names (default: the directories' names)")
    group.add_argument("--prompts", default=None, metavar="FILE",
                       help="JSON lines: prompt with candidates+rewards, candidates+preferred, chosen+rejected, "
                            "target, or prompt alone (see README)")
    group.add_argument("--reward", default=None,
                       help="preferred (log-likelihood of the preferred answers), file (the file's rewards), a "
                            "reward-model directory, or module:function (reward(prompts, responses) -> floats)")
    group.add_argument("--evaluation", default="candidates", choices=EVALUATIONS,
                       help="candidates (fixed responses, default), targets (next-token log-likelihood), generate "
                            "(greedy decoding of the composed model, slow)")
    group.add_argument("--composition", default="arithmetic", choices=["arithmetic", "merge"],
                       help="logit arithmetic (default) or weight-space merge of the adapters")
    group.add_argument("--max-new-tokens", type=int, default=16, help="generate: tokens per response")

    def run(args) -> int:
        check_sources_args(args)
        return cmd_sources(args)

    add_values_kind(parser, "sources", run, SOURCE_FLAGS)


def reward_from_spec(spec: str | None):
    """None, "preferred", "file", or a callable (reward-model directory, module:function)."""
    from pathlib import Path

    if spec in (None, "preferred", "file"):
        return spec
    if Path(spec).is_dir():
        from probes.sources import RewardModel
        return RewardModel(spec)
    if ":" in spec:
        import importlib
        module, _, name = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            raise CLIError(f"--reward {spec}: cannot import {name} from {module} ({error})") from None
        function.name = spec if not hasattr(function, "name") else function.name
        return function
    raise CLIError(f"--reward {spec} is not preferred, file, a reward-model directory or module:function")


def check_sources_args(args) -> None:
    """Flags checked before any model loads."""
    if args.task or args.text:
        raise CLIError("--task/--text do not apply to sources; give --prompts FILE")
    if not args.adapters or not args.prompts:
        raise CLIError("surgery values sources needs --adapters DIR [DIR ...] and --prompts FILE")
    from probes.sources import MAX_EXACT_SOURCES
    if args.estimator == "exact" and len(args.adapters) > MAX_EXACT_SOURCES:
        raise CLIError(f"exact values are limited to {MAX_EXACT_SOURCES} sources; {len(args.adapters)} given: use "
                       f"--estimator chain_krr --budget {20 * len(args.adapters)}")
    if args.evaluation == "generate" and args.reward in (None, "preferred", "file"):
        raise CLIError("--evaluation generate scores new text: give --reward DIR (reward model) or module:function")
    if args.evaluation == "targets" and args.reward is not None:
        raise CLIError("--evaluation targets measures the targets' log-likelihood; drop --reward")


def build_evaluation(args, records, tokenizer):
    from probes.sources import GenerationEvaluation
    from probes.sources.data import candidate_evaluation, encode, token_evaluation

    reward = reward_from_spec(args.reward)
    if args.evaluation == "targets":
        return token_evaluation(records, tokenizer)
    if args.evaluation == "generate":
        return GenerationEvaluation([encode(tokenizer, r["prompt"]) for r in records], [r["prompt"] for r in records],
                                    reward, tokenizer, max_new_tokens=args.max_new_tokens,
                                    reward_name=getattr(reward, "name", args.reward))
    if reward == "preferred":
        records = [{k: v for k, v in r.items() if k != "rewards"} for r in records]
    elif reward == "file":
        missing = [i for i, r in enumerate(records) if "rewards" not in r and "chosen" not in r]
        if missing or any("chosen" in r for r in records):
            raise CLIError("--reward file needs \"candidates\" and \"rewards\" in every line of --prompts")
    return candidate_evaluation(records, tokenizer, reward=None if isinstance(reward, str) else reward)


def cmd_sources(args) -> int:
    import surgery
    from probes.model_game import model_digest
    from probes.sources import source_values, sources_game
    from probes.sources.data import read_records
    from surgery.lora_compose import load_adapters, require_peft

    check_values_args(args)
    require_peft()
    inputs = [args.prompts, *args.adapters]
    out = check_output(args.out, args.force, inputs=inputs)
    check_store(args.store, inputs=inputs)
    check_distinct_outputs(out, args.store)
    records = read_records(args.prompts)
    loaded = surgery.load(args.base, trust_remote_code=args.trust_remote_code)
    if loaded.tokenizer is None:
        raise CLIError(f"--base {args.base} has no tokenizer; sources need one to read --prompts")
    evaluation = build_evaluation(args, records, loaded.tokenizer)
    digest = model_digest(loaded)  # before peft wraps the base
    adapters = load_adapters(loaded.model, args.adapters, args.names)
    game = sources_game(adapters, evaluation, composition=args.composition, base=args.base, base_digest=digest,
                        store=args.store)
    t0 = time.perf_counter()
    values = source_values(game, estimator=args.estimator, budget=args.budget, seed=args.seed)
    values.details.update({"wall_seconds": round(time.perf_counter() - t0, 2), "composition": args.composition,
                           "evaluation": evaluation.kind, "reward": evaluation.reward_name})
    values.save(out)
    print(f"{game.n_players} data sources of {args.base} ({args.composition}, {evaluation.kind}, "
          f"{evaluation.reward_name}): {values.estimator}, {values.n_evaluations} coalitions, "
          f"{values.details['wall_seconds']:.0f} s")
    print(f"v(no source) {values.empty_value:+.4f}, v(all sources) {values.full_value:+.4f}")
    for name, value in values.top_k(game.n_players):
        print(f"  {name:<24} {value:+.4f}")
    print(f"wrote {out}")
    return 0
