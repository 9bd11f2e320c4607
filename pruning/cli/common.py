"""Shared pieces of the `surgery` subcommands: model/task flags, progress bars, safe JSON output."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from surgery.errors import SurgeryError

DEFAULT_MODEL = "smollm2-135m"


class CLIError(SurgeryError):
    """A bad command line (missing flag, conflicting options, existing output): one line to the user."""


def add_model(parser, help_extra: str = "") -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"embedded name (smollm2-135m), local dir, .gguf file or hub id{help_extra} "
                             f"(default: {DEFAULT_MODEL})")


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


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing output unless --force; fail before any work if unwritable."""
    path = Path(path)
    if path.exists() and not force:
        raise CLIError(f"{path} already exists; choose another --out or pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent} (permission denied); choose another --out")
    return path


def write_json(path: Path, data: dict) -> None:
    """Atomic: write a temporary file, then rename, so a full disk never leaves half a JSON file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "eval"):
    """A tqdm bar showing evaluations per second and an ETA; yields its `update` function."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1, mininterval=1.0) as bar:
        yield bar.update


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
