"""Built-in tasks give well-formed, seeded batches for real and tiny tokenizers; bad input fails clearly."""

import pytest
import torch

from probes.tasks import BUILTIN_TASKS, Task, TaskError, as_tok, get_task
from probes.tasks.base import IGNORE

PROMPT_TASKS = ["ioi", "factual", "agreement", "greater_than"]


def check_well_formed(tb, tok):
    t = tb.tokens
    B, T = t.input_ids.shape
    lengths = t.attention_mask.sum(1)
    # right padding: ones then zeros, pad id from the tokenizer
    for b in range(B):
        n = int(lengths[b])
        assert t.attention_mask[b, :n].all() and not t.attention_mask[b, n:].any()
        assert (t.input_ids[b, n:] == tok.pad_id).all()
    assert int(lengths.max()) == T
    # positions inside the real tokens, each row has at least one target, targets in the vocabulary
    assert (t.score_positions < lengths[:, None]).all() and (t.score_positions >= 0).all()
    has = t.targets != IGNORE
    assert has.any(1).all()
    assert ((t.targets[has] >= 0) & (t.targets[has] < tok.vocab_size)).all()
    if tb.counterfactuals is not None:
        assert (tb.counterfactuals[has] != t.targets[has]).all()
    assert tb.size == B and len(tb.texts) == B


@pytest.mark.parametrize("name", list(BUILTIN_TASKS.keys() - {"text"}))
def test_builtin_task_batches_are_well_formed(name, any_tokenizer):
    tok = as_tok(any_tokenizer)
    tb = get_task(name, n=6).batch(any_tokenizer, seed=3)
    check_well_formed(tb, tok)
    t = tb.tokens
    lengths = t.attention_mask.sum(1)
    if name in PROMPT_TASKS:  # one position: the last real token; the target is the single next token
        assert t.score_positions.shape[1] == 1
        assert (t.score_positions[:, 0] == lengths - 1).all()
        for b in range(tb.size):  # the text really continues with the target as one token
            target_piece = tok.decode_pieces([int(t.targets[b, 0])])[0]
            assert target_piece.strip() and target_piece.strip()[:1].isalnum()
    else:  # induction: every scored position predicts the token actually there next
        nxt = t.input_ids.gather(1, t.score_positions + 1)
        assert torch.equal(nxt, t.targets)
        half = (int(lengths[0]) - len(tok.leading)) // 2
        assert (t.score_positions >= len(tok.leading) + half).all()  # the second half only


def test_smollm2_tokens_are_whole_words_with_leading_space(smollm_tokenizer):
    tok = smollm_tokenizer
    tb = get_task("ioi", n=8).batch(tok, seed=0)
    for b, text in enumerate(tb.texts):
        io, s = tok.decode([int(tb.tokens.targets[b, 0])]), tok.decode([int(tb.counterfactuals[b, 0])])
        assert io.startswith(" ") and s.startswith(" ")
        assert text.endswith(io)  # texts are prompt + target
        prompt = text[:-len(io)]
        assert prompt.count(s.strip()) == 2 and prompt.count(io.strip()) == 1  # subject named twice, IO once
    tb = get_task("agreement", n=8).batch(tok, seed=0)
    pairs = {tok.decode([int(x)]).strip() for x in torch.cat([tb.tokens.targets, tb.counterfactuals]).flatten()}
    assert pairs <= {"is", "are", "was", "were", "has", "have"}


def test_greater_than_token_sets(any_tokenizer):
    tb = get_task("greater_than", n=6).batch(any_tokenizer, seed=1)
    tok = as_tok(any_tokenizer)
    for b, text in enumerate(tb.texts):
        start = int(text.split("from the year ")[1][2:4])  # "1732 to ..." -> 32
        pieces = [tok.decode_pieces([int(i)])[0].strip() for i in tb.token_ids[b, 0]]
        for piece, w in zip(pieces, tb.token_weights[b, 0].tolist()):
            key = start if len(piece) == 2 else start // 10  # two-digit tokens or the tens digit
            assert w == (1.0 if int(piece) > key else -1.0)
        assert all(int(p) != (start if len(p) == 2 else start // 10) for p in pieces)


@pytest.mark.parametrize("name", list(BUILTIN_TASKS.keys() - {"text"}))
def test_tasks_are_seeded(name, bpe_tokenizer):
    task = get_task(name, n=5)
    a, b, c = (task.batch(bpe_tokenizer, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.tokens.input_ids, b.tokens.input_ids) and torch.equal(a.tokens.targets, b.tokens.targets)
    assert not torch.equal(a.tokens.input_ids, c.tokens.input_ids) if a.tokens.input_ids.shape == \
        c.tokens.input_ids.shape else True


def test_batches_split_the_same_examples(wordlevel_tokenizer):
    task = get_task("ioi", n=7)
    whole = task.batch(wordlevel_tokenizer, seed=0)
    parts = task.batches(wordlevel_tokenizer, seed=0, batch_size=3)
    assert [p.size for p in parts] == [3, 3, 1]
    assert sum((list(p.texts) for p in parts), []) == list(whole.texts)
    assert torch.equal(torch.cat([p.counterfactuals for p in parts]), whole.counterfactuals)
    for p in parts:
        assert int(p.tokens.attention_mask.sum(1).max()) == p.tokens.input_ids.shape[1]  # padding trimmed


def test_task_batch_metrics_are_bound(bpe_tokenizer):
    tb = get_task("ioi", n=4).batch(bpe_tokenizer, seed=0)
    assert tb.metric().name == "logit_diff" and tb.metric("pair_accuracy").name == "pair_accuracy"
    logits = torch.randn(2, 4, 1, as_tok(bpe_tokenizer).vocab_size)
    assert tb.metric()(logits, tb.tokens).shape == (2,)
    with pytest.raises(TaskError, match="known metrics"):
        tb.metric("rouge")


# ------------------------------------------------------------------------------ user-defined tasks
def test_from_prompts_single_and_multi_token_targets(smollm_tokenizer):
    task = Task.from_prompts("mine", ["The capital of France is", "The capital of Japan is "], ["Paris", "Tokyo"],
                             metric="accuracy")
    tb = task.batch(smollm_tokenizer, seed=0)
    assert sorted(smollm_tokenizer.decode([int(t)]) for t in tb.tokens.targets[:, 0]) == [" Paris", " Tokyo"]
    multi = Task.from_prompts("multi", ["The capital of Thailand is"], ["Bangkok"], metric="logprob")
    tb = multi.batch(smollm_tokenizer)
    ids = smollm_tokenizer.encode(" Bangkok", add_special_tokens=False)
    assert len(ids) == 2 and tb.tokens.targets[0].tolist() == ids  # teacher-forced: both pieces scored
    assert tb.tokens.input_ids[0, tb.tokens.score_positions[0, 1]] == ids[0]


def test_multi_token_target_where_one_is_required_names_target_and_tokenizer(smollm_tokenizer):
    task = Task.from_prompts("bad", ["The capital of Thailand is"], ["Bangkok"], metric="accuracy")
    with pytest.raises(TaskError, match=r"' Bangkok' is 2 tokens .*SmolLM|' Bangkok' is 2 tokens .*smollm"):
        task.batch(smollm_tokenizer)


def test_unknown_word_is_not_a_single_token(wordlevel_tokenizer):
    task = Task.from_prompts("unk", ["The capital of France is"], ["Zanzibar"], metric="accuracy")
    with pytest.raises(TaskError, match="unknown token"):
        task.batch(wordlevel_tokenizer)


def test_pair_metrics_need_counterfactuals():
    with pytest.raises(TaskError, match="counterfactuals"):
        Task.from_prompts("x", ["a b"], ["c"], metric="logit_diff")


# ------------------------------------------------------------------------------------ text files
def test_text_file_is_chunked_into_next_token_sequences(tmp_path, bpe_tokenizer):
    path = tmp_path / "t.txt"
    path.write_text("The capital of France is Paris. " * 40)
    tb = get_task("text", path=path, n=3, seq_len=16).batch(bpe_tokenizer, seed=0)
    t = tb.tokens
    assert t.input_ids.shape == (3, 16) and tb.metric().name == "loss"
    assert torch.equal(t.input_ids.gather(1, t.score_positions + 1), t.targets)


def test_empty_or_short_text_file_is_refused(tmp_path, bpe_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(TaskError, match="empty"):
        get_task("text", path=empty)
    short = tmp_path / "short.txt"
    short.write_text("The capital of France")
    with pytest.raises(TaskError, match="shorter than one sequence"):
        get_task("text", path=short, seq_len=64).batch(bpe_tokenizer)
    with pytest.raises(TaskError, match="not found"):
        get_task("text", path=tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------- registry
def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError) as info:
        get_task("sentiment")
    assert all(name in str(info.value) for name in BUILTIN_TASKS)
    with pytest.raises(TaskError, match="settings: n, length"):
        get_task("induction", size=3)
    assert get_task("SVA").name == "agreement" and get_task("greater-than").name == "greater_than"


def test_wordpiece_splits_are_refused_with_the_pieces_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "the", "capital", "of", "france", "is", "pa", "##ris",
                                         "rome"])}
    raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ok = Task.from_prompts("wp", ["the capital of france is"], ["rome"], metric="accuracy").batch(raw)
    assert ok.tokens.targets.tolist() == [[vocab["rome"]]] and ok.tokens.input_ids[0, 0] == vocab["the"]
    bad = Task.from_prompts("wp", ["the capital of france is"], ["paris"], metric="accuracy")
    with pytest.raises(TaskError, match=r"' paris' is 2 tokens \['pa', '##ris'\] for tokenizer .*WordPiece"):
        bad.batch(raw)


def test_text_without_a_source_uses_the_builtin_stdlib_documentation(bpe_tokenizer):
    from probes.tasks.builtin_text import stdlib_docs_text

    assert len(stdlib_docs_text()) > 100_000  # enough prose for calibration and held-out evaluation
    task = get_task("text", n=4, seq_len=32)
    assert task.settings["source"].startswith("builtin:stdlib-docs@")
    first, again, other = (task.batch(bpe_tokenizer, seed=s).tokens.input_ids for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(TaskError, match="not both"):
        get_task("text", path="a.txt", dataset="wikitext")
