"""Data sources as players: LoRA adapters (one per fine-tuning source) composed by language-model
arithmetic or by weight-space merging, valued by the Shapley value of an expected reward
(Tamine, Sakhi, Heymann: data valuation for LLM fine-tuning via language-model arithmetic).

Needs peft (`pip install "model-surgery[adapters]"`). The composition mechanism is surgery.lora_compose.
"""

from probes.sources.evaluations import CandidateEvaluation, ModelCache, TokenEvaluation
from probes.sources.game import COMPOSITIONS, sources_fingerprint, sources_game
from probes.sources.generation import GenerationEvaluation
from probes.sources.rewards import RewardModel, checked_rewards
from probes.sources.values import MAX_EXACT_SOURCES, source_values

__all__ = ["CandidateEvaluation", "TokenEvaluation", "GenerationEvaluation", "ModelCache", "COMPOSITIONS",
           "sources_game", "sources_fingerprint", "RewardModel", "checked_rewards", "MAX_EXACT_SOURCES",
           "source_values"]
