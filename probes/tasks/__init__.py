"""Tasks: what the model should do, the positions scored, and the metric. See probes/tasks/base.py."""

from probes.tasks.agreement import agreement_task
from probes.tasks.base import Task, TaskBatch, TaskError, Tok, as_tok, is_single_token, single_token
from probes.tasks.factual import factual_task
from probes.tasks.greater_than import greater_than_task
from probes.tasks.induction import induction_task
from probes.tasks.ioi import ioi_task
from probes.tasks.registry import ALIASES, BUILTIN_TASKS, get_task
from probes.tasks.text import text_task

__all__ = [
    "Task", "TaskBatch", "TaskError", "Tok", "as_tok", "is_single_token", "single_token", "get_task",
    "BUILTIN_TASKS", "ALIASES", "induction_task", "ioi_task", "factual_task", "agreement_task",
    "greater_than_task", "text_task",
]
