"""Task batches and store names the head-value benchmarks share (head_values, specialization,
amortized): one game -> one store directory, so a store one benchmark filled is replayed by the others.

    store_dir / store_name("ioi", n=4, design=40000, dtype="bfloat16", seed=0)  # ioi-n4-b40000-bfloat16-seed0
"""

from __future__ import annotations

INDUCTION_LENGTH = 8   # random tokens per half of an induction prompt
TEXT_SEQ_LEN = 16      # tokens per row of the text task (the built-in corpus)


def make_task(name: str, n: int, length: int = INDUCTION_LENGTH):
    """The built-in task `name` with n examples per batch, at the benchmarks' sizes."""
    from probes.tasks import get_task

    if name == "induction":
        return get_task("induction", n=n, length=length)
    if name == "text":
        return get_task("text", n=n, seq_len=TEXT_SEQ_LEN)
    return get_task(name, n=n)


def batch_tag(name: str, n: int, task_seed: int = 0, length: int = INDUCTION_LENGTH) -> str:
    """Which batch: task, its size and (when not 0) the seed of its examples."""
    tag = {"induction": f"induction-n{n}-L{length}", "text": f"text-n{n}-L{TEXT_SEQ_LEN}"}.get(name, f"{name}-n{n}")
    return tag + (f"-task{task_seed}" if task_seed else "")


def dtype_tag(dtype: str) -> str:
    """float32 stores carry no tag (they came first); others are named, since their values differ."""
    return "" if dtype == "float32" else f"-{dtype}"


def store_name(name: str, n: int, design: int, dtype: str, seed: int, task_seed: int = 0,
               length: int = INDUCTION_LENGTH) -> str:
    """Directory of the head-value game's store: batch, estimator design size, dtype, estimator seed."""
    return f"{batch_tag(name, n, task_seed, length)}-b{design}{dtype_tag(dtype)}-seed{seed}"
