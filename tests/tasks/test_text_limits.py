"""Text the task cannot honestly score: binary files, fewer sequences than asked, sequences past the context."""

import warnings

import pytest

import surgery
from probes.tasks import get_task
from probes.tasks.base import TaskError

SENTENCE = "The capital of France is Paris. "


@pytest.mark.parametrize("content", [b"PK\x03\x04\x00\x00binary zip header" + b"\x00" * 20,
                                     "plain text".encode("utf-16")])
def test_files_with_nul_bytes_are_refused_as_binary(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(TaskError, match=r"weights\.bin holds NUL bytes.*UTF-8 text"):
        get_task("text", path=path)


def test_a_nul_byte_after_plenty_of_text_is_found_too(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes((SENTENCE * 500).encode() + b"\x00\x01\x02")
    with pytest.raises(TaskError, match="NUL bytes"):
        get_task("text", path=path)


def test_a_short_text_warns_and_the_batch_holds_what_was_used(tmp_path, bpe_tokenizer):
    path = tmp_path / "t.txt"
    path.write_text(SENTENCE * 20)
    task = get_task("text", path=path, seq_len=32)
    with pytest.warns(UserWarning, match=r"gives only (\d+) sequence\(s\) of seq_len=32.*fewer than the 16 asked"):
        tb = task.batch(bpe_tokenizer, n=16, seed=0)
    assert 1 <= tb.size < 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough text: no warning
        assert task.batch(bpe_tokenizer, n=tb.size, seed=0).size == tb.size


def test_sequences_longer_than_the_model_context_are_refused_before_tokenising(tiny_dir, tmp_path):
    loaded = surgery.load(tiny_dir)  # max_position_embeddings = 128
    path = tmp_path / "t.txt"
    path.write_text(SENTENCE * 400)
    with pytest.raises(TaskError, match=r"seq_len=100000 is longer than the model's context of 128"):
        get_task("text", path=path, seq_len=100_000).batch(loaded, n=2)
    assert get_task("text", path=path, seq_len=128).batch(loaded, n=2).tokens.input_ids.shape == (2, 128)


def test_the_engine_refuses_a_batch_longer_than_the_context(tiny_dir):
    import torch

    from surgery.engine import AblationEngine
    loaded = surgery.load(tiny_dir)
    ids = torch.ones(1, 200, dtype=torch.long)
    batch = surgery.TokenBatch(ids, torch.ones_like(ids), torch.tensor([[199]]))
    engine = AblationEngine(loaded, "layers")
    with pytest.raises(surgery.SurgeryError, match=r"sequence length 200 is longer than the context.*128 tokens"):
        engine.logits(torch.ones(1, 3, dtype=torch.bool), batch)
