"""The `surgery` command: a thin layer over the Python API, one subcommand per step of the data flow.

    surgery values heads|layers -> surgery cluster -> surgery plan heads|layers|sparsity
    -> surgery prune -> surgery eval;   surgery run = the whole job on one model;
    surgery store repair = salvage a damaged evaluation store.

It lives in pruning/ because it drives all three packages and pruning/ is the top of the dependency
chain (surgery/ must not import probes/ or pruning/). Errors print one line and exit non-zero;
--debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from pruning.cli import inspect_cmds, model_cmds, plan_cmds, run_cmd, store_cmds, values_cmds

EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="Shapley values of model components, and the "
                                     "smaller models they buy: value, cluster, plan, prune, evaluate.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run_cmd, values_cmds, plan_cmds, model_cmds, inspect_cmds, store_cmds):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("surgery: interrupted (evaluations already computed are in the store; rerun to resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, json.JSONDecodeError) as err:
        # Our errors (SurgeryError, ProbeError, PruningError, TaskError) are ValueErrors by design.
        if args.debug:
            raise
        print(f"surgery: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"surgery: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the "
              "traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
