"""The tiny in-memory tokenizers of probes/tasks/tiny_tokenizers.py, under the name the tests import."""

from probes.tasks.tiny_tokenizers import bpe, bpe_fast, corpus, wordlevel  # noqa: F401
