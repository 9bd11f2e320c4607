"""Shared pieces of the `surgery` subcommands: model/task flags, progress bars, safe JSON output."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from surgery.atomic_io import atomic_path, write_json_atomic
from surgery.errors import SurgeryError
from surgery.outputs import figure_metadata, refuse_overwriting_inputs, refuse_unless_ours

DEFAULT_MODEL = "smollm2-135m"
# "format" of the JSON files the CLI writes itself (values and plans carry their own): a later
# --force recognises them as ours by this key (surgery.outputs).
CLUSTERS_FORMAT = "model-surgery.head-clusters"
EVAL_FORMAT = "model-surgery.eval"
RUN_REPORT_FORMAT = "model-surgery.run-report"


class CLIError(SurgeryError):
    """A bad command line (missing flag, conflicting options, existing output): one line to the user."""


def add_model(parser, help_extra: str = "") -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"embedded name (smollm2-135m), local dir, .gguf file or hub id{help_extra} "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code the model directory or hub repo names in its auto_map (off: such a "
                             "model is refused; model-surgery's own exports load without it)")


def _apply(flags) -> str:
    return "applies" if len(flags) == 1 else "apply"


def add_values_kind(parser, kind: str, run, only_flags=()) -> None:
    """Let `surgery values` take the kind `kind`, run by `run(args)`; the (attribute, flag) pairs in
    `only_flags` belong to that kind and are refused for the others, before any model loads."""
    for action in parser._actions:  # argparse has no public way to widen a positional's choices
        if action.dest == "kind":
            action.choices = [*action.choices, kind]
    run_others = parser.get_default("func")

    def dispatch(args) -> int:
        if args.kind == kind:
            return run(args)
        given = [flag for attr, flag in only_flags if getattr(args, attr) is not None]
        if given:
            raise CLIError(f"{', '.join(given)} {_apply(given)} only to `surgery values {kind}`; drop them")
        return run_others(args)

    parser.set_defaults(func=dispatch)


RAY_ONLY_FLAGS = (("address", "--address"), ("workers", "--workers"), ("num_gpus", "--num-gpus"))


def check_values_args(args) -> None:
    """Every `surgery values` flag that can be checked without the model, before anything is loaded
    or evaluated (every kind: heads, layers, tokens, sources)."""
    from probes.estimators import get_estimator

    if args.backend != "ray":
        given = [flag for attr, flag in RAY_ONLY_FLAGS if getattr(args, attr) is not None]
        if given:
            raise CLIError(f"{', '.join(given)} {_apply(given)} only to --backend ray (this run evaluates locally); "
                           "add --backend ray or drop them")
    for attr, flag in (("budget", "--budget"), ("n", "--n"), ("max_rows", "--max-rows"), ("seq_len", "--seq-len"),
                       ("window", "--window"), ("workers", "--workers")):
        value = getattr(args, attr, None)
        if value is not None and value < 1:
            raise CLIError(f"{flag} {value} must be a positive whole number")
    if args.num_gpus is not None and not args.num_gpus >= 0:
        raise CLIError(f"--num-gpus {args.num_gpus} must be 0 or more (GPUs per Ray worker)")
    if args.estimator is not None:
        get_estimator(args.estimator)  # an unknown name is refused here, naming the known ones


def load_model(args):
    """surgery.load(--model), running the model's own code only with --trust-remote-code."""
    import surgery

    return surgery.load(args.model, trust_remote_code=args.trust_remote_code)


def add_task(parser) -> None:
    """--task NAME | --text FILE, and the batch the game is played on."""
    parser.add_argument("--task", default=None,
                        help="built-in task: induction, ioi, factual, agreement, greater_than, text")
    parser.add_argument("--text", default=None, metavar="FILE",
                        help="score next-token loss on this UTF-8 text file (instead of --task)")
    parser.add_argument("--n", type=int, default=None, help="examples in the task batch (default: task's own)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per text sequence (--text / text task)")
    parser.add_argument("--metric", default=None, help="which of the task's metrics (default: its natural one)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the task's examples")


def task_from_args(args, default: str | None = None):
    """A probes Task from --task/--text (exactly one of them, or `default`)."""
    from probes.tasks import get_task

    if args.task and args.text:
        raise CLIError("give --task or --text, not both")
    if args.text:
        return get_task("text", path=args.text, seq_len=args.seq_len)
    name = args.task or default
    if name is None:
        raise CLIError("say what to measure: --task NAME (induction, ioi, factual, agreement, greater_than, text) "
                       "or --text FILE")
    if name == "text":
        return get_task("text", seq_len=args.seq_len)
    return get_task(name)


def check_seq_len(loaded, seq_len: int) -> None:
    """--seq-len must fit the model's context: refused right after loading, before any text is read."""
    from surgery.batch import check_sequence_length

    if seq_len < 2:
        raise CLIError(f"--seq-len must be >= 2 tokens (one input, one target), got {seq_len}")
    check_sequence_length(loaded, seq_len, "--seq-len")


def check_output(path: str | os.PathLike, force: bool, *, inputs=(), kind: str = "file",
                 flag: str = "--out") -> Path:
    """Validate an output before any work: refuse to overwrite without --force, refuse even with
    --force what model-surgery did not write (surgery.outputs), never write over an input of the
    command, refuse a directory where a file goes (and vice versa), fail early if unwritable.

    kind: "file" (a JSON file), "figure" (png/pdf/svg) or "dir" (an export directory).
    """
    path = Path(path)
    if kind == "figure":
        figure_metadata(path)  # refuses formats that cannot carry our mark
    try:
        refuse_overwriting_inputs(path, inputs, flag=flag)
    except SurgeryError as err:
        raise CLIError(str(err)) from None
    if path.exists() or path.is_symlink():
        if kind == "dir" and not path.is_dir():
            raise CLIError(f"{flag} {path} is a file, but this output is a directory; choose another {flag}")
        if kind != "dir" and path.is_dir():
            raise CLIError(f"{flag} {path} is a directory; give a file name, e.g. {path / 'out.json'}")
        if not force:
            raise CLIError(f"{path} already exists; choose another {flag} or pass --force to replace it")
        refuse_unless_ours(path, flag=flag)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent} (permission denied); choose another {flag}")
    return path


def check_store(path: str | os.PathLike | None, inputs=()) -> None:
    """--store, before any work: a new or empty directory or a coalition store; never a file, a folder
    of the user's, or an input of the command."""
    if path is None:
        return
    from probes.store import HEADER

    path = Path(path)
    try:
        refuse_overwriting_inputs(path, inputs, flag="--store")
    except SurgeryError as err:
        raise CLIError(str(err)) from None
    if path.exists() and not path.is_dir():
        raise CLIError(f"--store {path} is a file; give a directory (new, or a store of an earlier run to resume)")
    if path.is_dir() and any(path.iterdir()) and not (path / HEADER).is_file():
        raise CLIError(f"--store {path} is a non-empty directory that is not a coalition store (no {HEADER}); "
                       f"give a new directory or the store of an earlier run")


def check_distinct_outputs(*paths) -> None:
    """Two outputs of one command must not be the same file (e.g. --out x --figure x)."""
    given = [Path(p) for p in paths if p is not None]
    for i, a in enumerate(given):
        for b in given[i + 1:]:
            if a.resolve() == b.resolve():
                raise CLIError(f"two outputs of this command are the same file ({a}); give them different names")


def write_json(path: Path, data: dict) -> None:
    """Atomic (surgery.atomic_io): a full disk never leaves half a JSON file, and the error names it."""
    write_json_atomic(path, data)


def finite_or_none(data):
    """`data` with NaN/inf floats written as None: JSON has neither (a perplexity can overflow on a
    broken model)."""
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def save_figure(figure, path: str | os.PathLike) -> None:
    """savefig, atomically, with model-surgery's mark in the metadata (so --force may replace it later)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix[1:].lower(), dpi=120, bbox_inches="tight",
                       metadata=figure_metadata(path))


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "eval"):
    """A tqdm bar showing evaluations per second and an ETA; yields its `update` function."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1, mininterval=1.0) as bar:
        yield bar.update


@contextmanager
def stages(message: str):
    """A long step with named stages: prints each stage on its own line as it starts (so a
    minute-long export shows where it is, and progress bars of transformers get lines of their own),
    then how long each took. Yields `stage(name)`, to be called as each stage starts."""
    print(f"{message}:", flush=True)
    started = time.perf_counter()
    timings: list[list] = []

    def stage(name: str) -> None:
        now = time.perf_counter()
        if timings:
            timings[-1][1] = now - timings[-1][1]
        timings.append([name, now])
        print(f"  {name} ...", flush=True)

    try:
        yield stage
    except BaseException:
        print(f"  failed{' while ' + timings[-1][0] if timings else ''}", flush=True)
        raise
    now = time.perf_counter()
    if timings:
        timings[-1][1] = now - timings[-1][1]
    print(f"  done in {now - started:.1f} s" + (": " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings)
                                               if timings else ""), flush=True)


@contextmanager
def step(message: str):
    """Print a step that has no natural count, then how long it took."""
    print(f"{message} ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", flush=True)  # end the line, so the error message starts on its own
        raise
    print(f" {time.perf_counter() - t0:.1f} s", flush=True)
