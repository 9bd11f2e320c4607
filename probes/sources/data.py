"""Prompts files (JSON lines) for data-source values, and turning their text into token ids.

One JSON object per line; the keys say what is measured:
    {"prompt", "candidates": [...], "rewards": [...]}   expected reward over fixed candidates
    {"prompt", "candidates": [...], "preferred": k}     log-likelihood of the preferred candidate
    {"prompt", "chosen", "rejected"}                    a preference pair (candidates [chosen, rejected], preferred 0)
    {"prompt", "target"}                                next-token log-likelihood of the target
    {"prompt"}                                          free generation, scored by a reward
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from probes.errors import ProbeError
from probes.sources.dpo import PreferencePair
from probes.sources.evaluations import CandidateEvaluation, TokenEvaluation
from probes.sources.rewards import Reward, checked_rewards


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); a bad line is named by its number."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"prompts file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ProbeError(f"{path}:{number} is not JSON ({error.msg}); write one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ProbeError(f"{path}:{number} needs a \"prompt\" string")
        records.append(record)
    if not records:
        raise ProbeError(f"{path} holds no prompts")
    return records


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (prompt and response are encoded apart and joined)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def record_candidates(record: dict, where: str) -> tuple[list[str], int | None, list[float] | None]:
    """(candidates, preferred index or None, rewards or None) of one record."""
    if "chosen" in record or "rejected" in record:
        if not (isinstance(record.get("chosen"), str) and isinstance(record.get("rejected"), str)):
            raise ProbeError(f"{where}: a preference pair needs \"chosen\" and \"rejected\" strings")
        return [record["chosen"], record["rejected"]], 0, None
    candidates = record.get("candidates")
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise ProbeError(f"{where}: give \"candidates\" (a list of strings) or \"chosen\"/\"rejected\"")
    return candidates, record.get("preferred"), record.get("rewards")


def candidate_evaluation(records: Sequence[dict], tokenizer, *, reward: Reward | None = None,
                         reward_name: str | None = None, max_rows: int = 16) -> CandidateEvaluation:
    """A CandidateEvaluation of the records: rewards from `reward` (a callable or RewardModel) when given,
    else the records' "rewards", else the log-likelihood of their preferred candidates."""
    rows = [record_candidates(r, f"prompt {i}") for i, r in enumerate(records)]
    prompts = [encode(tokenizer, r["prompt"]) for r in records]
    candidates = [[encode(tokenizer, c) for c in cands] for cands, _, _ in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if reward is not None:
        name = reward_name or getattr(reward, "name", "reward")
        flat_prompts = [r["prompt"] for r, (cands, _, _) in zip(records, rows) for _ in cands]
        flat = checked_rewards(reward, flat_prompts, [c for cands, _, _ in rows for c in cands], name)
        table, start = [], 0
        for cands, _, _ in rows:
            table.append(flat[start: start + len(cands)].tolist())
            start += len(cands)
        return CandidateEvaluation(prompts, candidates, rewards=table, reward_name=name, max_rows=max_rows, pad_id=pad)
    if all(rewards is not None for _, _, rewards in rows):
        return CandidateEvaluation(prompts, candidates, rewards=[r for _, _, r in rows],
                                   reward_name=reward_name or "rewards-in-file", max_rows=max_rows, pad_id=pad)
    missing = [i for i, (_, preferred, _) in enumerate(rows) if preferred is None]
    if missing:
        raise ProbeError(f"prompt {missing[0]} has neither \"rewards\" nor \"preferred\"; give one of them in every "
                         "line, or a reward (model or callable)")
    return CandidateEvaluation(prompts, candidates, preferred=[p for _, p, _ in rows], max_rows=max_rows, pad_id=pad)


def token_evaluation(records: Sequence[dict], tokenizer, *, max_rows: int = 16) -> TokenEvaluation:
    """A TokenEvaluation of records with "prompt" and "target"."""
    missing = [i for i, r in enumerate(records) if not isinstance(r.get("target"), str)]
    if missing:
        raise ProbeError(f"prompt {missing[0]} has no \"target\" string (next-token targets need one per prompt)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenEvaluation([encode(tokenizer, r["prompt"]) for r in records],
                           [encode(tokenizer, r["target"]) for r in records], max_rows=max_rows, pad_id=pad)


def preference_pairs(records: Sequence[dict], tokenizer) -> list[PreferencePair]:
    """Token-id preference pairs of records with "prompt", "chosen", "rejected" (DPO training data)."""
    pairs = []
    for i, record in enumerate(records):
        if "chosen" not in record:
            raise ProbeError(f"pair {i}: DPO training data needs \"chosen\" and \"rejected\" in every line")
        (chosen, rejected), _, _ = record_candidates(record, f"pair {i}")
        pairs.append(PreferencePair(tuple(encode(tokenizer, record["prompt"])), tuple(encode(tokenizer, chosen)),
                                    tuple(encode(tokenizer, rejected))))
    return pairs
