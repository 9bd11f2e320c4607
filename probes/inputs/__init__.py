"""Input players: spans of a prompt (tokens, words, sentences, given spans) as players of a game."""

from probes.inputs.game import InputGame, input_game, input_values
from probes.inputs.prompt import PreparedPrompt, prepare_prompt
from probes.inputs.removal import REMOVALS, filler_id
from probes.inputs.spans import (Span, char_spans, owners_of_tokens, regex_spans, sentence_spans, span_names,
                                 split_text, word_spans)

__all__ = ["InputGame", "input_game", "input_values", "PreparedPrompt", "prepare_prompt", "REMOVALS", "filler_id", "Span", "char_spans",
           "owners_of_tokens", "regex_spans", "sentence_spans", "span_names", "split_text", "word_spans"]
