"""`surgery values tokens`: Shapley values of a prompt's tokens, words or sentences for a target."""

from __future__ import annotations

import time

from pruning.cli.common import CLIError, add_values_kind, check_output, check_store, check_values_args

TOKEN_ONLY_FLAGS = (("prompt", "--prompt"), ("target", "--target"), ("players", "--players"),
                    ("removal", "--removal"), ("filler", "--filler"), ("figure", "--figure"), ("tree", "--tree"),
                    ("dtype", "--dtype"))


def cmd_tokens(args) -> int:
    from probes.inputs import input_game
    from probes.inputs.render import span_details, values_png
    from probes.estimators import get_estimator
    import surgery
    import torch

    if not args.prompt:
        raise CLIError("surgery values tokens needs --prompt '<text>' (the input whose parts are valued)")
    check_values_args(args)
    if args.backend == "ray":
        raise CLIError("surgery values tokens evaluates locally (one prompt's coalitions batch on one model); "
                       "drop --backend ray")
    out = check_output(args.out, args.force, inputs=[args.model])
    check_store(args.store, inputs=[args.model])
    if args.tree and args.estimator not in (None, "exact"):
        raise CLIError(f"--tree gives Owen values over the text's tree; drop --estimator {args.estimator} "
                       "(exact without --budget, sampled tree-contiguous orders with one)")
    loaded = surgery.load(args.model, trust_remote_code=args.trust_remote_code, dtype=getattr(torch, args.dtype))
    filler = int(args.filler) if args.filler.isdigit() else args.filler
    game = input_game(loaded, args.prompt, args.target, players=args.players, removal=args.removal, filler=filler,
                      max_rows=args.max_rows, store=args.store)
    if args.tree:
        return tree_values(game, args, out)
    # Exact up to 8 players (256 forwards); beyond, the default estimator at 10 evaluations per player.
    estimator = args.estimator or ("exact" if game.n_players <= 8 else None)
    budget = args.budget if args.budget is not None or estimator == "exact" else 10 * game.n_players
    t0 = time.perf_counter()
    values = get_estimator(estimator)(game, budget=budget, seed=args.seed)
    values.details.update(span_details(game.prepared))
    values.details["wall_seconds"] = round(time.perf_counter() - t0, 2)
    values.save(out)
    print(f"{game.n_players} {args.players} of the prompt, target {game.prepared.target_text!r}, removal "
          f"{args.removal}: {values.estimator}, {values.n_evaluations} evaluations, {values.details['wall_seconds']} s")
    print("top 5: " + ", ".join(f"{name} {v:+.4f}" for name, v in values.top_k(5)))
    if args.figure:
        values_png(values, check_output(args.figure, args.force))
        print(f"figure: {args.figure}")
    print(f"wrote {out}")
    return 0


def tree_values(game, args, out) -> int:
    """Owen values over the prompt's own tree (paragraphs > sentences > words > the players), exact
    without --budget; written as tree-values JSON (the players' Values and one Values per level)."""
    from probes.estimators.owen_tree import owen_tree
    from probes.inputs.render import span_details, values_png
    from probes.text_tree import text_tree

    prep = game.prepared
    tree = text_tree(prep.text, [(span.start, span.end) for span in prep.spans])
    t0 = time.perf_counter()
    values = owen_tree(game, tree, args.budget, args.seed)
    values.players.details.update(span_details(prep))
    values.players.details["wall_seconds"] = round(time.perf_counter() - t0, 2)
    values.save(out)
    print(f"{game.n_players} {args.players} in a {len(values.levels)}-level tree, target {prep.target_text!r}: "
          f"{values.players.estimator}, {values.players.n_evaluations} evaluations, "
          f"{values.players.details['wall_seconds']} s")
    print(values.render())
    if args.figure:
        values_png(values.players, check_output(args.figure, args.force))
        print(f"figure: {args.figure}")
    print(f"wrote {out}")
    return 0


def extend_values_parser(p) -> None:
    """Add the `tokens` kind and its flags to `surgery values`; other kinds refuse the token flags."""
    p.add_argument("--prompt", default=None, help="tokens: the text whose parts are valued")
    p.add_argument("--target", default=None, help="tokens: continuation to score (default: the model's greedy one)")
    p.add_argument("--players", default=None, choices=["words", "tokens", "sentences"],
                   help="tokens: the players (default words)")
    p.add_argument("--removal", default=None, choices=["drop", "replace", "attention", "embedding"],
                   help="tokens: how absent players are removed (default replace)")
    p.add_argument("--filler", default=None, help="tokens, replace: pad, unk, space, '...', one-token text or an id")
    p.add_argument("--figure", default=None, help="tokens: also save the coloured text as a PNG")
    p.add_argument("--tree", action="store_const", const=True, default=None,
                   help="tokens: Owen values over the text's tree (paragraphs > sentences > words > players), "
                        "every level written (tree-values JSON); exact unless --budget")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="tokens: weights' dtype (default float32; bfloat16 is faster on CPUs with bf16 units and "
                        "gives another game, whose values can differ noticeably; the values file records it)")

    def run(args) -> int:
        args.players, args.removal = args.players or "words", args.removal or "replace"
        args.filler = args.filler or "pad"
        args.dtype = args.dtype or "float32"
        return cmd_tokens(args)

    add_values_kind(p, "tokens", run, TOKEN_ONLY_FLAGS)
