"""Text that every machine has: the English documentation inside Python's standard library.

Perplexity needs natural text, and this project may not download any (tests, the demo and CI run
offline). The docstrings of a fixed list of standard-library modules are real human-written English
prose (about 0.5 M characters), ship with every Python and need no file from the user. They change
a little between Python versions, so a text task built on them records a digest of the text.
Users with their own corpus pass a file (`text_task(path=...)`) or a `datasets` name instead.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings
from functools import lru_cache

MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs collections colorsys configparser contextlib copy csv "
    "dataclasses datetime decimal difflib dis doctest email enum fractions functools gc gettext graphlib heapq "
    "hmac http.client imaplib inspect itertools json keyword locale logging mailbox math mimetypes netrc numbers "
    "operator pathlib pickle plistlib poplib pprint queue random re reprlib sched secrets shlex shutil smtplib "
    "socket sqlite3 statistics string subprocess tarfile tempfile textwrap threading timeit tokenize trace "
    "tracemalloc types typing unittest urllib.request uuid wave weakref zipfile"
).split()


def _docstrings(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module missing from a trimmed Python build: skip it, the digest records the text
        return []
    docs = [inspect.getdoc(module) or ""]
    with warnings.catch_warnings():  # getmembers touches deprecated aliases (typing.io, ...)
        warnings.simplefilter("ignore", DeprecationWarning)
        members = sorted(inspect.getmembers(module), key=lambda item: item[0])
    for _, member in members:
        if getattr(member, "__module__", None) == module.__name__:
            docs.append(inspect.getdoc(member) or "")
    return [d for d in docs if len(d) > 40]  # one-liners like "Return x." add little prose


@lru_cache(maxsize=1)
def stdlib_docs_text() -> str:
    """The built-in text corpus: standard-library docstrings joined by blank lines, in a fixed order."""
    return "\n\n".join(doc for name in MODULES for doc in _docstrings(name))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
