"""Built-in tasks by name: `get_task("ioi", n=64)`."""

from __future__ import annotations

import inspect
from typing import Callable

from probes.tasks.agreement import agreement_task
from probes.tasks.base import Task, TaskError
from probes.tasks.factual import factual_task
from probes.tasks.greater_than import greater_than_task
from probes.tasks.induction import induction_task
from probes.tasks.ioi import ioi_task
from probes.tasks.text import text_task

BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "induction": induction_task,
    "ioi": ioi_task,
    "factual": factual_task,
    "agreement": agreement_task,
    "greater_than": greater_than_task,
    "text": text_task,
}
ALIASES = {"sva": "agreement", "subject_verb_agreement": "agreement", "factual_recall": "factual",
           "indirect_object_identification": "ioi", "greaterthan": "greater_than", "next_token": "text"}


def get_task(name: str | Task, **settings) -> Task:
    """A built-in task by name with its settings (n= size, and per task: length=, attractors=, path=, ...)."""
    if isinstance(name, Task):
        if settings:
            raise TaskError(f"get_task got a Task object and settings {sorted(settings)}; build the task with them")
        return name
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    factory = BUILTIN_TASKS.get(key)
    if factory is None:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(BUILTIN_TASKS)} "
                        "(or define one with Task.from_prompts(name, prompts, targets, metric=...))")
    allowed = list(inspect.signature(factory).parameters)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TaskError(f"task {key!r} has no setting(s) {unknown}; its settings: {', '.join(allowed)}")
    return factory(**settings)
