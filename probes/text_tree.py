"""A player tree built from text: players are character spans of a text (tokens, words, segments),
grouped by paragraph, sentence and word, for Owen values over the text's own structure
(probes.estimators.owen_tree)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from probes.errors import ProbeError

BOUNDARIES = {
    "paragraph": re.compile(r"\n\s*\n"),
    "sentence": re.compile(r"(?<=[.?!])\s+|\n"),
    "word": re.compile(r"\s+"),
}


def text_tree(text: str, spans: Sequence[tuple[int, int]], levels: Sequence[str] = ("paragraph", "sentence", "word")) -> list:
    """Nested lists of player indices (one per span) grouped by `levels`, outermost first.

    A span belongs to the unit its first non-space character is in. Groups with a single member
    are replaced by that member (an Owen value does not change through a one-child group), and a
    tree whose top has one group is its content, so one sentence of words is a flat list."""
    unknown = [level for level in levels if level not in BOUNDARIES]
    if unknown:
        raise ProbeError(f"unknown text level(s) {unknown}; levels are {list(BOUNDARIES)}")
    if len(spans) == 0:
        raise ProbeError("text_tree needs at least one span")
    ends = {level: [m.end() for m in BOUNDARIES[level].finditer(text)] for level in levels}
    keys = []
    for lo, hi in spans:
        if not 0 <= lo < hi <= len(text):
            raise ProbeError(f"span ({lo}, {hi}) is outside the text's {len(text)} characters or empty")
        piece = text[lo:hi]
        anchor = lo + len(piece) - len(piece.lstrip()) if piece.strip() else lo
        keys.append(tuple(sum(end <= anchor for end in ends[level]) for level in levels))
    tree = _group(list(range(len(spans))), keys, 0, len(levels))
    return tree if isinstance(tree, list) else [tree]


def _group(members: list[int], keys: list[tuple], depth: int, n_levels: int):
    if depth == n_levels:
        return members[0] if len(members) == 1 else members
    groups: dict = {}
    for m in members:
        groups.setdefault(keys[m][depth], []).append(m)
    children = [_group(g, keys, depth + 1, n_levels) for g in groups.values()]
    return children[0] if len(children) == 1 else children
