"""The error every task raises."""

from probes.errors import ProbeError


class TaskError(ProbeError):
    """A task cannot be built: unknown name, bad settings, unusable text, or targets the tokenizer splits."""
