"""Players of an input game: spans of a text, as character offsets.

A span is a half-open character range [start, end) of the text. Everything else in this package
(tokens, removal, rendering) is derived from char offsets, so a caller can hand in spans from any
splitter (words, sentences, response segments, a regex, a parser) and get the same machinery.

Splitters attach the whitespace before a unit to the unit ("the cat" -> "the", " cat"), so that
removing a span by deleting its characters leaves well-formed text, and a byte-level BPE token
such as " cat" falls inside exactly one span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from probes.errors import ProbeError

UNITS = ("tokens", "words", "sentences")
_WORD = re.compile(r"\s*\S+")
# A sentence runs to its terminal punctuation (and closing quotes/brackets) or to the end of the text.
_SENTENCE = re.compile(r"\s*.+?(?:[.!?]+[\"')\]]*(?=\s|$)|$)", re.S)


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of a text; `text` is what they hold (for names and display)."""

    start: int
    end: int
    text: str

    @property
    def label(self) -> str:
        """The span's text without its surrounding whitespace (what a reader sees)."""
        return self.text.strip() or repr(self.text)


def regex_spans(text: str, pattern: str | re.Pattern, *, attach_space: bool = False) -> list[Span]:
    """One span per non-empty match of `pattern` in `text` (e.g. r"\\d+" for every number).

    attach_space: extend each span over the whitespace just before it, so deleting it keeps the text tidy."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    spans = []
    for match in compiled.finditer(text):
        start, end = match.span()
        if end <= start:
            continue
        if attach_space:
            while start > 0 and text[start - 1].isspace() and (not spans or start - 1 >= spans[-1].end):
                start -= 1
        spans.append(Span(start, end, text[start:end]))
    return spans


def word_spans(text: str) -> list[Span]:
    """Whitespace-separated words, each with the whitespace before it."""
    return regex_spans(text, _WORD)


def sentence_spans(text: str) -> list[Span]:
    """Sentences ending in . ! or ? (or the end of the text), each with the whitespace before it."""
    return [s for s in regex_spans(text, _SENTENCE) if s.text.strip()]


def char_spans(text: str, offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """Spans the caller gives as (start, end) character offsets: inside the text, non-empty, not overlapping."""
    spans = []
    for pair in offsets:
        try:
            start, end = (int(x) for x in pair)
        except (TypeError, ValueError):
            raise ProbeError(f"a span must be a (start, end) pair of character offsets, got {pair!r}") from None
        if not 0 <= start < end <= len(text):
            raise ProbeError(f"span ({start}, {end}) lies outside the text of {len(text)} characters; "
                             f"give 0 <= start < end <= {len(text)}")
        spans.append(Span(start, end, text[start:end]))
    spans.sort(key=lambda s: s.start)
    for a, b in zip(spans, spans[1:]):
        if b.start < a.end:
            raise ProbeError(f"spans ({a.start}, {a.end}) and ({b.start}, {b.end}) overlap; a character can "
                             "belong to one player only (use a span tree for nested groups)")
    return spans


def split_text(text: str, unit: str) -> list[Span]:
    """Spans of `text` for a named unit: 'words' or 'sentences' ('tokens' needs a tokenizer: token_spans)."""
    if unit == "words":
        return word_spans(text)
    if unit == "sentences":
        return sentence_spans(text)
    raise ProbeError(f"unknown span unit {unit!r}; use one of {', '.join(UNITS)}, a regex via regex_spans, "
                     "or (start, end) character offsets")


def shift(spans: Sequence[Span], offset: int, text: str) -> list[Span]:
    """The same spans inside a larger `text` in which the original text starts at `offset`."""
    return [Span(s.start + offset, s.end + offset, text[s.start + offset:s.end + offset]) for s in spans]


def span_names(spans: Sequence[Span]) -> list[str]:
    """Unique, readable player names: '<index>:<label>' (a label alone can repeat, e.g. 'the')."""
    return [f"{i}:{s.label}" for i, s in enumerate(spans)]


def owners_of_tokens(spans: Sequence[Span], token_offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each token (char offsets; (0, 0) or empty = special token), the index of the span it belongs to, or -1.

    A token belongs to the span holding most of its characters (ties: the earlier span), if that span
    holds at least half of them; otherwise (template text, special tokens, a span cutting a sliver off
    a token) it belongs to none and is never removed."""
    owners = []
    for start, end in token_offsets:
        best, best_overlap = -1, 0
        if end > start:
            for i, span in enumerate(spans):
                if span.start >= end:
                    break
                overlap = min(end, span.end) - max(start, span.start)
                if overlap > best_overlap:
                    best, best_overlap = i, overlap
        owners.append(best if 2 * best_overlap >= end - start else -1)
    return owners
