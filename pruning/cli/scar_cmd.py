"""`surgery values scar`: SCAR dense per-token rewards of one response, from Owen values of its segments.

Registered into the `values` parser after `tokens` (it shares --prompt with it and --reward with
`sources`): --response, --alpha, --segment-tree; --budget/--seed as every kind (no budget = exact).
"""

from __future__ import annotations

from pruning.cli.common import CLIError, add_values_kind, check_output, check_values_args, write_json
from pruning.cli.sources_cmd import reward_from_spec

SCAR_FLAGS = (("response", "--response"), ("alpha", "--alpha"), ("segment_tree", "--segment-tree"))
# Flags of `values tokens` that mean nothing for a SCAR response.
TOKEN_FLAGS = (("target", "--target"), ("players", "--players"), ("removal", "--removal"), ("filler", "--filler"),
               ("figure", "--figure"), ("tree", "--tree"), ("dtype", "--dtype"))


def prompt_response_reward(spec: str, prompt: str):
    """A SCAR text reward from a --reward spec (reward-model directory or module:function, both
    called as reward(prompts, responses)): SCAR scores prompt + edited response as one text."""
    from probes.scar import TextReward

    reward = reward_from_spec(spec)
    if reward is None or isinstance(reward, str):
        raise CLIError(f"surgery values scar needs --reward DIR (a reward model) or module:function "
                       f"(reward(prompts, responses) -> floats), not {spec!r}")

    def score(texts: list[str]) -> list[float]:
        return reward([prompt] * len(texts), [text[len(prompt):] for text in texts])

    return TextReward(score, batched=True, name=getattr(reward, "name", spec))


def cmd_scar(args) -> int:
    import surgery
    from probes.scar import scar_rewards

    given = [flag for attr, flag in TOKEN_FLAGS if getattr(args, attr, None) is not None]
    if given:
        raise CLIError(f"{', '.join(given)}: flags of `surgery values tokens`, not of scar; drop them")
    check_values_args(args)
    if not args.prompt or not args.response:
        raise CLIError("surgery values scar needs --prompt '<text>' and --response '<text>' (the response is rewarded)")
    if args.estimator not in (None, "exact"):
        raise CLIError(f"SCAR uses Owen values over the segment tree; drop --estimator {args.estimator} "
                       "(exact without --budget, sampled with one)")
    reward = prompt_response_reward(args.reward, args.prompt)
    out = check_output(args.out, args.force, inputs=[args.model])
    tokenizer = surgery.load(args.model, trust_remote_code=args.trust_remote_code).tokenizer
    if tokenizer is None:
        raise CLIError(f"--model {args.model} has no tokenizer; SCAR needs one to place rewards on response tokens")
    result = scar_rewards(args.prompt, args.response, reward, tokenizer, alpha=args.alpha if args.alpha is not None
                          else 1.0, tree=args.segment_tree or "sentences", budget=args.budget, seed=args.seed)
    write_json(out, result.to_json_dict())
    print(f"{len(result.segments)} segments, {len(result.token_ids)} tokens: reward {result.full_reward:+.4f} "
          f"(empty {result.empty_reward:+.4f}); {result.reward_calls} reward calls, {result.seconds:.2f} s")
    print(result.values.render({f"s{k}": seg for k, seg in enumerate(result.segments)}))
    print(f"wrote {out}")
    return 0


def add_scar_kind(parser) -> None:
    """Add the `scar` kind and its flags to `surgery values`; other kinds refuse them."""
    group = parser.add_argument_group("SCAR dense rewards (`surgery values scar`)")
    group.add_argument("--response", default=None, help="scar: the response whose reward is spread over its tokens")
    group.add_argument("--alpha", type=float, default=None,
                       help="scar: weight of the dense part (1 = all dense, 0 = the terminal reward alone; default 1)")
    group.add_argument("--segment-tree", default=None, choices=["sentences", "flat"],
                       help="scar: segments grouped by sentence (Owen, default) or one flat group (Shapley)")
    add_values_kind(parser, "scar", cmd_scar, SCAR_FLAGS)
