"""Span players: splitters cover the text, given spans are checked, tokens map to the span holding them."""

import re

import pytest

from probes.errors import ProbeError
from probes.inputs import char_spans, owners_of_tokens, regex_spans, sentence_spans, split_text, word_spans

TEXT = "  The cat sat. Did it? Yes!  It did"


def test_words_and_sentences_tile_the_text_with_leading_space_attached():
    for spans in (word_spans(TEXT), sentence_spans(TEXT)):
        assert "".join(s.text for s in spans) == TEXT
        assert all(b.start == a.end for a, b in zip(spans, spans[1:]))
    assert [s.label for s in word_spans(TEXT)] == ["The", "cat", "sat.", "Did", "it?", "Yes!", "It", "did"]
    assert [s.label for s in sentence_spans(TEXT)] == ["The cat sat.", "Did it?", "Yes!", "It did"]


def test_regex_spans_each_match_a_player():
    spans = regex_spans("a 12 b 345", r"\d+", attach_space=True)
    assert [(s.start, s.end, s.text) for s in spans] == [(1, 4, " 12"), (6, 10, " 345")]


def test_char_spans_refuse_outside_and_overlap():
    assert [s.text for s in char_spans("hello world", [(6, 11), (0, 5)])] == ["hello", "world"]
    with pytest.raises(ProbeError, match="outside the text of 11 characters"):
        char_spans("hello world", [(3, 20)])
    with pytest.raises(ProbeError, match="overlap"):
        char_spans("hello world", [(0, 6), (5, 9)])
    with pytest.raises(ProbeError, match="unknown span unit"):
        split_text("x", "paragraphs")


def test_token_belongs_to_span_with_most_of_its_characters():
    spans = char_spans("abcdef", [(0, 2), (2, 6)])
    assert owners_of_tokens(spans, [(0, 0), (0, 3), (1, 5), (5, 6)]) == [-1, 0, 1, 1]
    assert owners_of_tokens(word_spans("a b"), [(0, 1), (1, 3)]) == [0, 1]
