"""`surgery store repair`: keep every verifiable record of a damaged evaluation store."""

from __future__ import annotations


def cmd_store_repair(args) -> int:
    from probes.store import repair_store

    report = repair_store(args.store)
    print(report.summary())
    return 0


def register(sub) -> None:
    p = sub.add_parser("store", help="maintain an evaluation store (--store DIR of `surgery values`/`run`)",
                       description="Maintain an evaluation store.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser("repair", help="keep every record whose checksum verifies; report what is dropped",
                           description="Rewrite the store's values.jsonl keeping every record whose checksum "
                                       "verifies (the first copy of a coalition wins) and list the dropped lines. "
                                       "The original log stays beside it as values.jsonl.damaged.")
    r.add_argument("--store", required=True, metavar="DIR", help="the store directory")
    r.set_defaults(func=cmd_store_repair)
