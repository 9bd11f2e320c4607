"""Next-token loss on text: a local text file, a `datasets` dataset for users with the network, or
(neither given) the built-in corpus of Python standard-library documentation (probes.tasks.builtin_text).

The text is tokenised once and cut into non-overlapping sequences of `seq_len` tokens (leading
special tokens included); n of them are chosen with the seed. Every position that has a next
token is scored (the target is that token), so the natural metric is the mean cross-entropy.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from probes.tasks.base import Row, Task, TaskError, Tok
from probes.tasks.builtin_text import stdlib_docs_text, text_digest


def _read_file(path: Path, max_chars: int) -> str:
    if not path.is_file():
        raise TaskError(f"text: file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(max_chars)
    if "\x00" in text:
        # Text never holds NUL bytes; binaries (weights, archives, UTF-16 files) do. Decoding one with
        # errors="replace" would score the model on noise and report a perplexity as if it were text.
        raise TaskError(f"text: {path} holds NUL bytes, so it is a binary file (or UTF-16), not UTF-8 text; "
                        "give a plain UTF-8 text file")
    if not text.strip():
        raise TaskError(f"text: the file {path} is empty (no text to score); give a file with text in it")
    return text


def _read_dataset(name: str, config: str | None, split: str, column: str, max_chars: int) -> str:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise TaskError("text: a dataset needs the `datasets` package (pip install datasets)") from error
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as error:  # network, unknown name, missing config: say which
        raise TaskError(f"text: could not load dataset {name!r} (config={config!r}, split={split!r}): {error}"
                        ) from error
    parts, size = [], 0
    for record in stream:
        if column not in record:
            raise TaskError(f"text: dataset {name!r} has no column {column!r}; its columns: {sorted(record)}")
        parts.append(str(record[column]))
        size += len(parts[-1]) + 1
        if size >= max_chars:
            break
    text = "\n".join(parts)
    if not text.strip():
        raise TaskError(f"text: dataset {name!r} (split={split!r}, column={column!r}) gave no text")
    return text


def text_task(path: str | Path | None = None, dataset: str | None = None, n: int = 8, seq_len: int = 64,
              config: str | None = None, split: str = "train", column: str = "text",
              max_chars: int = 2_000_000) -> Task:
    """Next-token loss on `path` (a local UTF-8 text file), on `dataset` (a datasets name; needs network),
    or, when neither is given, on the built-in standard-library documentation text."""
    if path is not None and dataset is not None:
        raise TaskError("text: give one of path=<text file> or dataset=<datasets name>, not both")
    if seq_len < 2:
        raise TaskError(f"text: seq_len must be >= 2 tokens (one input, one target), got {seq_len}")
    if path is not None:
        source = str(path)
    elif dataset is not None:
        source = f"datasets:{dataset}/{config or ''}/{split}/{column}"
    else:
        source = f"builtin:stdlib-docs@{text_digest(stdlib_docs_text())}"
    if path is not None:  # fail early on a missing or empty file, before any tokenizer is involved
        _read_file(Path(path), max_chars)
    cache: dict = {}

    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        key = (id(tok.raw), tok.vocab_size, tok.name)
        if key not in cache:
            if path is not None:
                text = _read_file(Path(path), max_chars)
            elif dataset is not None:
                text = _read_dataset(dataset, config, split, column, max_chars)
            else:
                text = stdlib_docs_text()[:max_chars]
            cache[key] = tok.encode(text)
        ids = cache[key]
        body = seq_len - len(tok.leading)
        if body < 2:
            raise TaskError(f"text: seq_len={seq_len} leaves no room after the leading special tokens")
        if len(ids) < body:
            raise TaskError(f"text: {source} is {len(ids)} tokens long for tokenizer {tok.name}, shorter than one "
                            f"sequence of seq_len={seq_len}; use a longer text or a smaller seq_len")
        n_chunks = len(ids) // body
        if n_chunks < n:
            # Sequences do not overlap, so a short text yields fewer than asked: say so rather than
            # report n sequences that were never scored.
            warnings.warn(f"text: {source} gives only {n_chunks} sequence(s) of seq_len={seq_len} for tokenizer "
                          f"{tok.name} ({len(ids)} tokens), fewer than the {n} asked for; using {n_chunks}. "
                          "Give a longer text or a smaller seq_len for more", UserWarning, stacklevel=3)
        order = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        rows = []
        for c in order:
            seq = tok.leading + ids[c * body:(c + 1) * body]
            rows.append(Row(seq, list(range(len(seq) - 1)), seq[1:]))
        return rows

    return Task("text", build, ("loss", "perplexity", "logprob", "accuracy", "kl"), n=n,
                scored="every position that has a next token (the target is that token)",
                settings={"source": source, "seq_len": seq_len}, description=__doc__.split("\n")[0])
